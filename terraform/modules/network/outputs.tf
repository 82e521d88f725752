output "vpc_id" {
  value       = aws_vpc.this.id
  description = "VPC id."
}

output "vpc_cidr_block" {
  value       = aws_vpc.this.cidr_block
  description = "VPC CIDR block."
}

output "public_subnet_ids" {
  value       = aws_subnet.public[*].id
  description = "Public subnet ids, one per AZ (load balancers)."
}

output "private_subnet_ids" {
  value       = aws_subnet.private[*].id
  description = "Private subnet ids, one per AZ (nodes, databases)."
}
