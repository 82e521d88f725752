variable "environment" {
  type        = string
  description = "Environment name; resources are named shop-<environment>."
}

variable "domain" {
  type        = string
  description = "Hosted zone of the environment, e.g. staging.example-shop.com."
}

variable "cidr_block" {
  type        = string
  description = "VPC CIDR block (distinct per account, so VPCs can be peered later)."
}

variable "az_count" {
  type        = number
  default     = 2
  description = "Availability zones the subnets span."
}

variable "single_nat_gateway" {
  type        = bool
  default     = false
  description = "One shared NAT gateway instead of one per AZ (cheaper, outside production)."
}

variable "kubernetes_version" {
  type        = string
  default     = "1.31"
  description = "EKS Kubernetes version."
}

variable "node_count" {
  type        = number
  default     = 2
  description = "Desired and minimum size of the managed node group."
}

variable "database_name" {
  type        = string
  description = "Database created on the RDS instance (the replication target)."
}

variable "db_instance_class" {
  type        = string
  default     = "db.t4g.medium"
  description = "RDS instance class."
}

variable "multi_az" {
  type        = bool
  default     = false
  description = "RDS standby in a second AZ."
}

variable "backup_retention_days" {
  type        = number
  default     = 7
  description = "Days RDS keeps automated backups."
}

variable "deletion_protection" {
  type        = bool
  description = "Deletion protection of the RDS instance and the load balancer."
}

variable "app_url" {
  type        = string
  default     = null
  description = "Base URL of the AWS side when it differs from https://shop-aws.<domain>."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags added to every resource."
}
