# The dev account: the shop stack with this environment's sizes.

module "shop" {
  source                = "../../modules/shop"
  environment           = var.environment
  domain                = "dev.example-shop.com"
  database_name         = "shop_dev"
  cidr_block            = "10.20.0.0/16"
  single_nat_gateway    = true
  backup_retention_days = 3
  deletion_protection   = false
  app_url               = var.app_url
  tags = {
    Project     = "shop"
    Environment = var.environment
    ManagedBy   = "terraform/live/dev"
  }
}
