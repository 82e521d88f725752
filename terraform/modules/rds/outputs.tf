output "db_instance_id" {
  value       = aws_db_instance.this.identifier
  description = "RDS instance identifier."
}

output "address" {
  value       = aws_db_instance.this.address
  description = "Host name of the instance."
}

output "port" {
  value       = aws_db_instance.this.port
  description = "PostgreSQL port."
}

output "master_user_secret_arn" {
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
  description = "Secrets Manager secret holding the master credentials (the ARN, not the value)."
}

output "security_group_id" {
  value       = aws_security_group.db.id
  description = "Security group of the instance."
}
