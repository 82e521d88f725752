# The production account: the shop stack with this environment's sizes.

module "shop" {
  source                = "../../modules/shop"
  environment           = var.environment
  domain                = "example-shop.com"
  database_name         = "shop"
  cidr_block            = "10.30.0.0/16"
  az_count              = 3
  node_count            = 3
  db_instance_class     = "db.r6g.large"
  multi_az              = true
  backup_retention_days = 14
  deletion_protection   = true
  app_url               = var.app_url
  tags = {
    Project     = "shop"
    Environment = var.environment
    ManagedBy   = "terraform/live/production"
  }
}
