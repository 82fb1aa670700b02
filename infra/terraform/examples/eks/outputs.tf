output "bucket_name" {
  description = "The run bucket."
  value       = module.bucket.bucket_name
}

output "storage_root" {
  description = "storageRoot for k8s/overlays/aws/settings.yaml (and run.storage.root)."
  value       = module.bucket.storage_root
}

output "service_account_role_arn" {
  description = "roleArn for k8s/overlays/aws/settings.yaml: the IRSA role of ServiceAccount themis/themis-ray."
  value       = module.ray_role.role_arn
}

output "cluster_name" {
  description = "The EKS cluster."
  value       = module.eks.cluster_name
}

output "kubeconfig_command" {
  description = "Points kubectl (and make train-cluster) at the cluster."
  value       = "${module.eks.kubeconfig_command} --region ${var.region}"
}
