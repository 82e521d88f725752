variable "name" {
  type        = string
  description = "Web ACL name, e.g. shop-staging."
}

variable "alb_arn" {
  type        = string
  description = "ARN of the load balancer the web ACL protects."
}

variable "managed_rule_groups" {
  type = list(string)
  default = [
    "AWSManagedRulesCommonRuleSet",
    "AWSManagedRulesKnownBadInputsRuleSet",
    "AWSManagedRulesSQLiRuleSet",
    "AWSManagedRulesAmazonIpReputationList",
  ]
  description = "AWS managed rule groups, evaluated in this order."
}

variable "rate_limit_per_5_minutes" {
  type        = number
  default     = 2000
  description = "Requests one IP may send in a 5-minute window before it is blocked."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags added to every resource."
}
