variable "name" {
  description = "Name of the IAM role."
  type        = string
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider (module eks: oidc_provider_arn)."
  type        = string
}

variable "oidc_issuer_url" {
  description = "The cluster's OIDC issuer URL, with or without https:// (module eks: oidc_issuer_url)."
  type        = string
}

variable "service_accounts" {
  description = "Kubernetes service accounts allowed to take the role, as \"<namespace>:<name>\"."
  type        = list(string)

  validation {
    condition     = length(var.service_accounts) > 0 && alltrue([for sa in var.service_accounts : can(regex("^[a-z0-9-]+:[a-z0-9-]+$", sa))])
    error_message = "service_accounts must be a non-empty list of \"<namespace>:<name>\"."
  }
}

variable "s3_bucket_arns" {
  description = "Buckets the role may list, read and write (objects only; the bucket itself stays as Terraform made it)."
  type        = list(string)
  default     = []
}

variable "policy_json" {
  description = "An extra IAM policy document (JSON) for the role, or null."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
