variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-west-2"
}

variable "name" {
  description = "Name of the cluster and prefix of the other resources."
  type        = string
  default     = "themis"
}

variable "bucket_name" {
  description = "Globally unique name of the run bucket, e.g. themis-runs-<account id>."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets in two or more availability zones, with a NAT gateway (nodes pull images)."
  type        = list(string)
}

variable "public_access_cidrs" {
  description = "CIDR blocks allowed to reach the Kubernetes API (where you run kubectl and make)."
  type        = list(string)
}

variable "gpu_instance_types" {
  description = "GPU node instance types."
  type        = list(string)
  default     = ["g5.2xlarge"]
}
