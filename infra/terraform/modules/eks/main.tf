# An EKS cluster for Themis: a CPU node group (Ray heads, operators) and a GPU node group (Ray
# workers) that the cluster autoscaler grows and shrinks within their bounds (the GPU group down to
# zero), plus the IAM OIDC provider that IRSA roles trust (module irsa_role).

data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}

locals {
  partition = data.aws_partition.current.partition
  node_policies = [
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
  ]
}

# --- control plane ------------------------------------------------------------------------------

resource "aws_kms_key" "secrets" {
  description         = "${var.name}: envelope encryption of Kubernetes secrets"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.kms.json
  tags                = var.tags
}

# The account's administrators manage the key; EKS uses it through the cluster role's grants.
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy must let the account administer its key, or nobody can manage it.
  #checkov:skip=CKV_AWS_111:A key policy applies to its own key only: "*" as resource means this key.
  #checkov:skip=CKV_AWS_356:A key policy applies to its own key only: "*" as resource means this key.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_alias" "secrets" {
  name          = "alias/${var.name}-eks-secrets"
  target_key_id = aws_kms_key.secrets.key_id
}

resource "aws_iam_role" "cluster" {
  name               = "${var.name}-eks-cluster"
  assume_role_policy = data.aws_iam_policy_document.assume["eks.amazonaws.com"].json
  tags               = var.tags
}

data "aws_iam_policy_document" "assume" {
  for_each = toset(["eks.amazonaws.com", "ec2.amazonaws.com"])

  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = [each.key]
    }
  }
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

resource "aws_eks_cluster" "this" {
  #checkov:skip=CKV_AWS_39:The public endpoint admits only public_access_cidrs (a required input that refuses 0.0.0.0/0); set endpoint_public_access = false where a VPN reaches the VPC.
  #checkov:skip=CKV_AWS_38:public_access_cidrs is a required input whose validation refuses 0.0.0.0/0; checkov cannot see its value.
  name     = var.name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster.arn

  vpc_config {
    subnet_ids              = var.subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = var.endpoint_public_access
    public_access_cidrs     = var.public_access_cidrs
  }

  encryption_config {
    resources = ["secrets"]

    provider {
      key_arn = aws_kms_key.secrets.arn
    }
  }

  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  access_config {
    authentication_mode                         = "API_AND_CONFIG_MAP"
    bootstrap_cluster_creator_admin_permissions = true # whoever runs terraform can use kubectl
  }

  tags       = var.tags
  depends_on = [aws_iam_role_policy_attachment.cluster]
}

# IRSA: IAM trusts the cluster's service account tokens through this provider. No thumbprint:
# IAM verifies EKS issuers against its own trusted certificate authorities.
resource "aws_iam_openid_connect_provider" "this" {
  url            = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list = ["sts.amazonaws.com"]
  tags           = var.tags
}

# --- nodes ----------------------------------------------------------------------------------------

resource "aws_iam_role" "node" {
  name               = "${var.name}-eks-node"
  assume_role_policy = data.aws_iam_policy_document.assume["ec2.amazonaws.com"].json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each   = toset(local.node_policies)
  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.key}"
}

# Pods select a group by the themis.dev/pool label (k8s/overlays/aws). EKS tags each group's
# Auto Scaling group for the cluster autoscaler, which also reads the labels and taints from EKS
# to scale a group up from zero.
resource "aws_eks_node_group" "cpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "cpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.subnet_ids
  instance_types  = var.cpu_instance_types
  ami_type        = "AL2023_x86_64_STANDARD"
  disk_size       = var.node_disk_size_gb
  labels          = { "themis.dev/pool" = "cpu" }

  scaling_config {
    min_size     = var.cpu_scaling.min
    desired_size = var.cpu_scaling.min
    max_size     = var.cpu_scaling.max
  }

  update_config {
    max_unavailable = 1
  }

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size] # the cluster autoscaler owns it
  }

  tags       = var.tags
  depends_on = [aws_iam_role_policy_attachment.node]
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "gpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.subnet_ids
  instance_types  = var.gpu_instance_types
  ami_type        = "AL2023_x86_64_NVIDIA" # NVIDIA driver and container toolkit included
  capacity_type   = var.gpu_capacity_type
  disk_size       = var.node_disk_size_gb
  labels          = { "themis.dev/pool" = "gpu" }

  # Only pods that tolerate it (the Ray GPU workers) land on a GPU node.
  taint {
    key    = "nvidia.com/gpu"
    value  = "true"
    effect = "NO_SCHEDULE"
  }

  scaling_config {
    min_size     = var.gpu_scaling.min
    desired_size = var.gpu_scaling.min
    max_size     = var.gpu_scaling.max
  }

  update_config {
    max_unavailable = 1
  }

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  tags       = var.tags
  depends_on = [aws_iam_role_policy_attachment.node]
}
