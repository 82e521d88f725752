# The bucket the application's users' files move into (from DigitalOcean Spaces): private, ACLs
# disabled (Object Ownership "BucketOwnerEnforced", the default of new buckets), versioned so an
# overwrite or a delete during the cutover can be undone, encrypted with S3-managed keys.
# Public objects of the legacy bucket are served through a bucket policy or a CDN, never ACLs.

terraform {
  required_version = ">= 1.10"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
  }
}

resource "aws_s3_bucket" "uploads" {
  bucket = var.bucket
  tags   = var.tags
}

resource "aws_s3_bucket_ownership_controls" "uploads" {
  bucket = aws_s3_bucket.uploads.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "uploads" {
  bucket                  = aws_s3_bucket.uploads.id
  block_public_acls       = true
  ignore_public_acls      = true
  block_public_policy     = var.public_read_prefix == null
  restrict_public_buckets = var.public_read_prefix == null
}

resource "aws_s3_bucket_versioning" "uploads" {
  bucket = aws_s3_bucket.uploads.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "uploads" {
  bucket = aws_s3_bucket.uploads.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# Objects that were public on the legacy bucket (`s3.replicate` with `public_objects: private`
# lists them in its manifest) are readable by anyone under this prefix only.
resource "aws_s3_bucket_policy" "public_read" {
  count  = var.public_read_prefix == null ? 0 : 1
  bucket = aws_s3_bucket.uploads.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "PublicReadOfFormerlyPublicObjects"
      Effect    = "Allow"
      Principal = "*"
      Action    = "s3:GetObject"
      Resource  = "${aws_s3_bucket.uploads.arn}/${var.public_read_prefix}*"
    }]
  })
  depends_on = [aws_s3_bucket_public_access_block.uploads]
}
