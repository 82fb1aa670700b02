variable "chart_version" {
  description = "kuberay-operator Helm chart version; its CRDs must match ../shared/k8s/crds that the manifests are validated against."
  type        = string
  default     = "1.7.0"
}

variable "namespace" {
  description = "Namespace of the operator (k8s/base/networkpolicy.yaml lets this namespace reach the Ray dashboards)."
  type        = string
  default     = "kuberay"
}

variable "node_selector" {
  description = "Node labels the operator pod must match (the CPU node group)."
  type        = map(string)
  default     = { "themis.dev/pool" = "cpu" }
}
