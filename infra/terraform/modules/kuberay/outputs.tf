output "namespace" {
  description = "Namespace the operator runs in."
  value       = helm_release.kuberay_operator.namespace
}

output "chart_version" {
  description = "The installed kuberay-operator chart version."
  value       = helm_release.kuberay_operator.version
}
