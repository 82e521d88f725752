# The staging account: the shop stack with this environment's sizes.

module "shop" {
  source              = "../../modules/shop"
  environment         = var.environment
  domain              = "staging.example-shop.com"
  database_name       = "shop_staging"
  cidr_block          = "10.10.0.0/16"
  single_nat_gateway  = true
  deletion_protection = false
  app_url             = var.app_url
  tags = {
    Project     = "shop"
    Environment = var.environment
    ManagedBy   = "terraform/live/staging"
  }
}
