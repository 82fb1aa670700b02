variable "name" {
  description = "Cluster name; also the prefix of its IAM roles and KMS alias."
  type        = string
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version (the manifests are validated against 1.32)."
  type        = string
  default     = "1.32"
}

variable "subnet_ids" {
  description = "Private subnets (at least two availability zones) for the control plane ENIs and the nodes."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "EKS needs subnets in at least two availability zones."
  }
}

variable "endpoint_public_access" {
  description = "Expose the Kubernetes API endpoint publicly (limited to public_access_cidrs); false when a VPN reaches the VPC."
  type        = bool
  default     = true
}

variable "public_access_cidrs" {
  description = "CIDR blocks allowed to reach the public API endpoint (your office or VPN egress)."
  type        = list(string)

  validation {
    condition     = !contains(var.public_access_cidrs, "0.0.0.0/0")
    error_message = "Do not open the Kubernetes API to the whole internet."
  }
}

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (Ray heads, the KubeRay operator, system pods)."
  type        = list(string)
  default     = ["m6i.2xlarge"]
}

variable "cpu_scaling" {
  description = "Size bounds of the CPU node group; the cluster autoscaler moves within them."
  type        = object({ min = number, max = number })
  default     = { min = 1, max = 4 }
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (Ray GPU workers; the manifests size pods for g5.2xlarge)."
  type        = list(string)
  default     = ["g5.2xlarge"]
}

variable "gpu_scaling" {
  description = "Size bounds of the GPU node group; 0 lets it scale to zero when no Ray worker asks for a GPU."
  type        = object({ min = number, max = number })
  default     = { min = 0, max = 4 }
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the GPU nodes (training resumes from checkpoints after a spot loss)."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type is ON_DEMAND or SPOT."
  }
}

variable "node_disk_size_gb" {
  description = "Root volume of every node: the Ray images with CUDA, torch and vLLM are large."
  type        = number
  default     = 200
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
