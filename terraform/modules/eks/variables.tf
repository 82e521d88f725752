variable "name" {
  type        = string
  description = "Cluster name, e.g. shop-staging; also the prefix of its IAM roles and load balancer."
}

variable "kubernetes_version" {
  type        = string
  description = "EKS Kubernetes version, e.g. 1.31."
}

variable "vpc_id" {
  type        = string
  description = "VPC of the cluster and its load balancer."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Subnets of the control plane ENIs and the node group (two AZs or more)."
}

variable "public_subnet_ids" {
  type        = list(string)
  description = "Subnets of the internet-facing load balancer."
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate of the HTTPS listener."
}

variable "public_endpoint" {
  type        = bool
  default     = true
  description = "Whether the API server endpoint is reachable from public_access_cidrs."
}

variable "public_access_cidrs" {
  type        = list(string)
  default     = ["0.0.0.0/0"]
  description = "CIDR blocks allowed to reach the public API endpoint."
}

variable "node_instance_types" {
  type        = list(string)
  default     = ["m6i.large"]
  description = "EC2 instance types of the managed node group."
}

variable "node_desired_size" {
  type        = number
  default     = 2
  description = "Desired node count."
}

variable "node_min_size" {
  type        = number
  default     = 2
  description = "Minimum node count."
}

variable "node_max_size" {
  type        = number
  default     = 4
  description = "Maximum node count."
}

variable "app_port" {
  type        = number
  default     = 8080
  description = "Container port the load balancer forwards to."
}

variable "health_check_path" {
  type        = string
  default     = "/healthz"
  description = "Target group health check path."
}

variable "alb_deletion_protection" {
  type        = bool
  default     = true
  description = "Deletion protection of the load balancer."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags added to every resource."
}
