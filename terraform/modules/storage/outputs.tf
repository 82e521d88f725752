output "bucket" {
  value       = aws_s3_bucket.uploads.id
  description = "The uploads bucket's name (s3.replicate's target)."
}

output "bucket_arn" {
  value       = aws_s3_bucket.uploads.arn
  description = "The uploads bucket's ARN (the application's IAM policy)."
}
