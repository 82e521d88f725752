locals {
  name   = "shop-${var.environment}"
  domain = "staging.example-shop.com"
  tags = {
    Project     = "shop"
    Environment = var.environment
    ManagedBy   = "terraform/live/staging"
  }
}

module "network" {
  source             = "../../modules/network"
  name               = local.name
  cidr_block         = "10.10.0.0/16"
  az_count           = 2
  single_nat_gateway = true
}

module "dns" {
  source       = "../../modules/dns"
  domain       = local.domain
  alb_dns_name = module.eks.alb_dns_name
  alb_zone_id  = module.eks.alb_zone_id
}

module "eks" {
  source                  = "../../modules/eks"
  name                    = local.name
  kubernetes_version      = "1.31"
  vpc_id                  = module.network.vpc_id
  private_subnet_ids      = module.network.private_subnet_ids
  public_subnet_ids       = module.network.public_subnet_ids
  certificate_arn         = module.dns.certificate_arn
  node_desired_size       = 2
  node_min_size           = 2
  alb_deletion_protection = false
}

module "rds" {
  source                   = "../../modules/rds"
  identifier               = local.name
  database_name            = "shop_staging"
  vpc_id                   = module.network.vpc_id
  subnet_ids               = module.network.private_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  instance_class           = "db.t4g.medium"
  multi_az                 = false
  backup_retention_days    = 7
  deletion_protection      = false
}

module "waf" {
  source  = "../../modules/waf"
  name    = local.name
  alb_arn = module.eks.alb_arn
}
