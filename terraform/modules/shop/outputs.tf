output "db_instance_id" {
  value       = module.rds.db_instance_id
  description = "RDS instance identifier."
}

output "eks_cluster_name" {
  value       = module.eks.cluster_name
  description = "EKS cluster name."
}

output "alb_arn" {
  value       = module.eks.alb_arn
  description = "ARN of the application load balancer."
}

output "alb_dns_name" {
  value       = module.eks.alb_dns_name
  description = "DNS name of the application load balancer (the cutover target)."
}

output "app_url" {
  value       = coalesce(var.app_url, "https://${module.dns.direct_fqdn}")
  description = "Base URL of the service on the AWS side, reached directly (not through the cutover record)."
}

output "uploads_bucket" {
  value       = module.storage.bucket
  description = "The bucket users' uploads move into from Spaces (s3.replicate's target)."
}
