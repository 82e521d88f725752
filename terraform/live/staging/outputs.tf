# The outputs runbooks read as tf.*; terraform/sandbox defines the same names (validate checks it).
output "db_instance_id" { value = module.shop.db_instance_id }
output "eks_cluster_name" { value = module.shop.eks_cluster_name }
output "alb_arn" { value = module.shop.alb_arn }
output "alb_dns_name" { value = module.shop.alb_dns_name }
output "app_url" { value = module.shop.app_url }
output "uploads_bucket" { value = module.shop.uploads_bucket }
