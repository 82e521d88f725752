# Live root of the production account. State lives in that account's bucket; the S3 lockfile
# (use_lockfile, a conditional PutObject) serialises applies. `cutover infra` passes the same
# bucket, key and region from environments/production.yaml with -backend-config.

terraform {
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
  }

  backend "s3" {
    bucket       = "shop-tfstate-333333333333"
    key          = "shop/production/terraform.tfstate"
    region       = "us-east-1"
    encrypt      = true
    use_lockfile = true
  }
}

provider "aws" {
  region              = var.region
  allowed_account_ids = [var.account_id]

  # Run by hand, Terraform assumes the environment's role itself. cutover assumes that role
  # first (session cutover-<run id>, account checked by STS) and leaves role_arn unset.
  dynamic "assume_role" {
    for_each = var.role_arn == null ? [] : [var.role_arn]
    content {
      role_arn     = assume_role.value
      session_name = var.session_name
    }
  }
}
