output "cluster_name" {
  description = "The EKS cluster's name."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "The Kubernetes API endpoint."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority" {
  description = "The cluster's CA certificate (base64), for the kubernetes and helm providers."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "oidc_provider_arn" {
  description = "The IAM OIDC provider that IRSA roles trust (module irsa_role)."
  value       = aws_iam_openid_connect_provider.this.arn
}

output "oidc_issuer_url" {
  description = "The cluster's OIDC issuer URL."
  value       = aws_eks_cluster.this.identity[0].oidc[0].issuer
}

output "node_groups" {
  description = "Node group name -> its scaling bounds and the themis.dev/pool label pods select it by."
  value = {
    for g in [aws_eks_node_group.cpu, aws_eks_node_group.gpu] : g.node_group_name => {
      pool     = g.labels["themis.dev/pool"]
      min_size = g.scaling_config[0].min_size
      max_size = g.scaling_config[0].max_size
    }
  }
}

output "kubeconfig_command" {
  description = "Run it to point kubectl at the cluster."
  value       = "aws eks update-kubeconfig --name ${aws_eks_cluster.this.name}"
}
