variable "bucket" {
  type        = string
  description = "Bucket name, e.g. shop-uploads-staging-111111111111 (names are global)."
}

variable "public_read_prefix" {
  type        = string
  default     = null
  description = "Key prefix anyone may read (objects public on the legacy bucket); null keeps the bucket private."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags for the bucket."
}
