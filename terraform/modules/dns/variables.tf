variable "domain" {
  type        = string
  description = "Hosted zone name, e.g. staging.example-shop.com."
}

variable "service" {
  type        = string
  default     = "shop"
  description = "Label of the service's record (`<service>.<domain>`), the one the cutover moves."
}

variable "direct_record" {
  type        = string
  default     = "shop-aws"
  description = "Label of the alias record that reaches the load balancer directly."
}

variable "alb_dns_name" {
  type        = string
  description = "DNS name of the load balancer."
}

variable "alb_zone_id" {
  type        = string
  description = "Canonical hosted zone id of the load balancer."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags added to every resource."
}
