variable "name" {
  type        = string
  description = "Name prefix for every resource, e.g. shop-staging."
}

variable "cidr_block" {
  type        = string
  description = "VPC CIDR block; public subnets take the first /4 slices of it, private ones from the ninth."
}

variable "az_count" {
  type        = number
  default     = 2
  description = "Availability zones to spread subnets over (at least 2)."
  validation {
    condition     = var.az_count >= 2
    error_message = "az_count must be at least 2."
  }
}

variable "single_nat_gateway" {
  type        = bool
  default     = false
  description = "One NAT gateway shared by every private subnet instead of one per AZ."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags added to every resource."
}
