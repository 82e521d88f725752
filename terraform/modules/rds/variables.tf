variable "identifier" {
  type        = string
  description = "RDS instance identifier, e.g. shop-staging."
}

variable "vpc_id" {
  type        = string
  description = "VPC of the instance."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets of the DB subnet group (two AZs or more)."
}

variable "client_security_group_id" {
  type        = string
  description = "Security group allowed to connect on 5432 (the EKS cluster's)."
}

variable "database_name" {
  type        = string
  description = "Database created on the instance (the replication target)."
}

variable "engine_major_version" {
  type        = string
  default     = "15"
  description = "PostgreSQL major version; selects the parameter group family."
}

variable "engine_version" {
  type        = string
  default     = "15.8"
  description = "PostgreSQL engine version."
}

variable "instance_class" {
  type        = string
  default     = "db.t4g.medium"
  description = "RDS instance class."
}

variable "master_username" {
  type        = string
  default     = "shop_admin"
  description = "Master user name; its password is managed by RDS in Secrets Manager."
}

variable "allocated_storage_gb" {
  type        = number
  default     = 50
  description = "Initial storage, in GiB."
}

variable "max_allocated_storage_gb" {
  type        = number
  default     = 200
  description = "Storage autoscaling ceiling, in GiB."
}

variable "kms_key_arn" {
  type        = string
  default     = null
  description = "KMS key for storage encryption; the account's aws/rds key when null."
}

variable "multi_az" {
  type        = bool
  default     = false
  description = "Standby in a second AZ."
}

variable "backup_retention_days" {
  type        = number
  default     = 7
  description = "Days automated backups are kept (1-35)."
  validation {
    condition     = var.backup_retention_days >= 1 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 1 and 35."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "RDS deletion protection; set per environment (on in production)."
}

variable "allowed_cidr_blocks" {
  type        = list(string)
  default     = []
  description = "Extra CIDR blocks allowed on 5432 (the legacy host, for replication)."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags added to every resource."
}
