variable "name" {
  description = "Bucket name (globally unique). Themis runs live under s3://<name>/<prefix>."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.name))
    error_message = "A bucket name is 3-63 lowercase letters, digits, dots and hyphens."
  }
}

variable "runs_prefix" {
  description = "Prefix of the Themis run root inside the bucket (run.storage.root = s3://<name>/<runs_prefix>)."
  type        = string
  default     = "runs"
}

variable "checkpoint_run_names" {
  description = "Run names (run.name in the job configs) whose checkpoints expire; jobs/configs/cluster.yaml uses 'cluster'."
  type        = list(string)
  default     = ["cluster"]
}

variable "checkpoint_expiration_days" {
  description = "Days after which Ray Train checkpoints (<runs_prefix>/<run>/checkpoints/) are deleted; the exported model/ stays."
  type        = number
  default     = 30

  validation {
    condition     = var.checkpoint_expiration_days >= 1
    error_message = "checkpoint_expiration_days must be at least 1."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days that overwritten or deleted object versions are kept before they expire."
  type        = number
  default     = 30
}

variable "kms_key_arn" {
  description = "KMS key for default encryption; null uses the AWS managed key aws/s3."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Allow `terraform destroy` to delete a bucket that still holds objects (tests only)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
