output "cluster_name" {
  value       = aws_eks_cluster.this.name
  description = "EKS cluster name."
}

output "cluster_arn" {
  value       = aws_eks_cluster.this.arn
  description = "EKS cluster ARN (the kubeconfig context name `aws eks update-kubeconfig` writes)."
}

output "cluster_endpoint" {
  value       = aws_eks_cluster.this.endpoint
  description = "API server endpoint."
}

output "cluster_security_group_id" {
  value       = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
  description = "Security group EKS created for the cluster and its nodes."
}

output "oidc_provider_arn" {
  value       = aws_iam_openid_connect_provider.this.arn
  description = "IAM OIDC provider for IRSA roles."
}

output "alb_arn" {
  value       = aws_lb.app.arn
  description = "ARN of the application load balancer."
}

output "alb_dns_name" {
  value       = aws_lb.app.dns_name
  description = "DNS name of the application load balancer."
}

output "alb_zone_id" {
  value       = aws_lb.app.zone_id
  description = "Canonical hosted zone id of the load balancer (alias records)."
}

output "target_group_arn" {
  value       = aws_lb_target_group.app.arn
  description = "Target group the TargetGroupBinding registers pods in."
}
