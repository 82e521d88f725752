# Provider-free stand-in for a live root (terraform/live/<env>), for the local sandbox where no AWS
# provider can be installed. It uses only the built-in terraform_data resource and the S3 backend,
# so init, plan, apply, state locking and outputs are all real Terraform; the outputs have the same
# names as a live root's and describe the resources the sandbox seeded in the environment's
# account (RDS instance, EKS cluster, ALB behind the WAF web ACL).

terraform {
  required_version = ">= 1.10"
  backend "s3" {}
}

variable "environment" {
  type        = string
  description = "Environment name: staging, dev or production."
}

variable "account_id" {
  type        = string
  description = "The environment's AWS account id."
}

variable "region" {
  type        = string
  description = "AWS region."
}

variable "app_url" {
  type        = string
  description = "Base URL of the service on the AWS side (the load balancer)."
}

locals {
  alb_id = substr(sha256("shop-${var.environment}-${var.account_id}"), 0, 16)
}

resource "terraform_data" "rds" {
  input = {
    identifier = "shop-${var.environment}"
    engine     = "postgres"
  }
}

resource "terraform_data" "eks" {
  input = {
    name = "shop-${var.environment}"
  }
}

resource "terraform_data" "alb" {
  input = {
    arn      = "arn:aws:elasticloadbalancing:${var.region}:${var.account_id}:loadbalancer/app/shop-${var.environment}/${local.alb_id}"
    dns_name = "shop-${var.environment}-${substr(local.alb_id, 0, 10)}.${var.region}.elb.amazonaws.com"
  }
}

output "db_instance_id" {
  value       = terraform_data.rds.input.identifier
  description = "RDS instance identifier."
}

output "eks_cluster_name" {
  value       = terraform_data.eks.input.name
  description = "EKS cluster name."
}

output "alb_arn" {
  value       = terraform_data.alb.input.arn
  description = "ARN of the application load balancer."
}

output "alb_dns_name" {
  value       = terraform_data.alb.input.dns_name
  description = "DNS name of the application load balancer (the cutover target)."
}

output "app_url" {
  value       = var.app_url
  description = "Base URL of the service on the AWS side."
}

# The uploads bucket the sandbox seeded in the account (moto's S3), named as the storage module
# names it.
resource "terraform_data" "uploads" {
  input = {
    bucket = "shop-uploads-${var.environment}-${var.account_id}"
  }
}

output "uploads_bucket" {
  value       = terraform_data.uploads.input.bucket
  description = "The bucket users' uploads move into from Spaces (s3.replicate's target)."
}
