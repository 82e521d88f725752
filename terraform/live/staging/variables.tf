variable "account_id" {
  type        = string
  description = "The staging account id; the provider refuses to act in any other account."
}

variable "region" {
  type        = string
  description = "AWS region of the environment."
}

variable "role_arn" {
  type        = string
  default     = null
  description = "Role to assume in the staging account when run by hand; unset under cutover."
}

variable "session_name" {
  type        = string
  default     = "terraform"
  description = "Session name of the assumed role (shows in CloudTrail)."
}

variable "environment" {
  type        = string
  description = "Environment name (staging); names and tags every resource."
  validation {
    condition     = var.environment == "staging"
    error_message = "This root builds the staging environment only."
  }
}

variable "app_url" {
  type        = string
  default     = null
  description = "Base URL of the AWS side when it differs from https://shop-aws.<domain>."
}
