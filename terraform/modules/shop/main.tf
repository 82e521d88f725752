# The shop stack of one account: network, DNS and certificate, EKS with its load balancer, RDS and
# the WAF, wired together. Each live root (terraform/live/<env>) calls it once with that
# environment's sizes, so the wiring is written once.

terraform {
  required_version = ">= 1.10"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
  }
}

locals {
  name = "shop-${var.environment}"
}

module "network" {
  source             = "../network"
  name               = local.name
  cidr_block         = var.cidr_block
  az_count           = var.az_count
  single_nat_gateway = var.single_nat_gateway
  tags               = var.tags
}

module "dns" {
  source       = "../dns"
  domain       = var.domain
  alb_dns_name = module.eks.alb_dns_name
  alb_zone_id  = module.eks.alb_zone_id
  tags         = var.tags
}

module "eks" {
  source                  = "../eks"
  name                    = local.name
  kubernetes_version      = var.kubernetes_version
  vpc_id                  = module.network.vpc_id
  private_subnet_ids      = module.network.private_subnet_ids
  public_subnet_ids       = module.network.public_subnet_ids
  certificate_arn         = module.dns.certificate_arn
  node_desired_size       = var.node_count
  node_min_size           = var.node_count
  alb_deletion_protection = var.deletion_protection
  tags                    = var.tags
}

module "rds" {
  source                   = "../rds"
  identifier               = local.name
  database_name            = var.database_name
  vpc_id                   = module.network.vpc_id
  subnet_ids               = module.network.private_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  instance_class           = var.db_instance_class
  multi_az                 = var.multi_az
  backup_retention_days    = var.backup_retention_days
  deletion_protection      = var.deletion_protection
  tags                     = var.tags
}

module "waf" {
  source  = "../waf"
  name    = local.name
  alb_arn = module.eks.alb_arn
  tags    = var.tags
}

data "aws_caller_identity" "current" {}

module "storage" {
  source = "../storage"
  # Bucket names are global: the account id keeps each environment's apart.
  bucket = "shop-uploads-${var.environment}-${data.aws_caller_identity.current.account_id}"
  tags   = var.tags
}
