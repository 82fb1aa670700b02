# Themis on AWS, end to end: the run bucket, an EKS cluster with autoscaling CPU and GPU node
# groups, the IRSA role of the Ray pods, the cluster autoscaler, the NVIDIA device plugin and the
# KubeRay operator. Then fill k8s/overlays/aws/settings.yaml from the outputs (docs/kubernetes.md):
#   terraform init && terraform apply -var bucket_name=... -var 'subnet_ids=[...]' -var 'public_access_cidrs=[...]'

provider "aws" {
  region = var.region

  default_tags {
    tags = { project = "themis", managed-by = "terraform" }
  }
}

# The Helm releases talk to the new cluster with a short-lived token from the AWS CLI.
provider "helm" {
  kubernetes {
    host                   = module.eks.cluster_endpoint
    cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority)

    exec {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
    }
  }
}

module "bucket" {
  source = "../../modules/s3_bucket"
  name   = var.bucket_name
}

module "eks" {
  source              = "../../modules/eks"
  name                = var.name
  subnet_ids          = var.subnet_ids
  public_access_cidrs = var.public_access_cidrs
  gpu_instance_types  = var.gpu_instance_types
}

# What every Ray pod of k8s/ runs as (ServiceAccount themis/themis-ray): the run bucket, nothing else.
module "ray_role" {
  source            = "../../modules/irsa_role"
  name              = "${var.name}-ray"
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer_url   = module.eks.oidc_issuer_url
  service_accounts  = ["themis:themis-ray"]
  s3_bucket_arns    = [module.bucket.bucket_arn]
}

# --- autoscaling: the node groups grow when Ray asks for pods that do not fit ---------------------

module "autoscaler_role" {
  source            = "../../modules/irsa_role"
  name              = "${var.name}-cluster-autoscaler"
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer_url   = module.eks.oidc_issuer_url
  service_accounts  = ["kube-system:cluster-autoscaler"]
  policy_json       = data.aws_iam_policy_document.autoscaler.json
}

data "aws_iam_policy_document" "autoscaler" {
  #checkov:skip=CKV_AWS_356:Describe calls take no resource ARN; the writes below are limited to this cluster's groups by tag.
  #checkov:skip=CKV_AWS_111:Scaling writes are conditioned on this cluster's k8s.io/cluster-autoscaler tag.
  statement {
    sid = "Discover"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
      "eks:DescribeNodegroup", # labels and taints of a group at zero nodes
    ]
    resources = ["*"]
  }

  statement {
    sid       = "ScaleThisClustersGroups"
    actions   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${module.eks.cluster_name}"
      values   = ["owned"]
    }
  }
}

resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = "9.46.6"
  namespace  = "kube-system"

  values = [yamlencode({
    cloudProvider = "aws"
    awsRegion     = var.region
    autoDiscovery = { clusterName = module.eks.cluster_name }
    rbac = {
      serviceAccount = {
        name        = "cluster-autoscaler"
        annotations = { "eks.amazonaws.com/role-arn" = module.autoscaler_role.role_arn }
      }
    }
    extraArgs = {
      balance-similar-node-groups = true
      skip-nodes-with-system-pods = false
      scale-down-unneeded-time    = "5m" # GPU nodes are expensive: give them back soon
      scale-down-delay-after-add  = "5m"
      expander                    = "least-waste"
    }
    nodeSelector = { "themis.dev/pool" = "cpu" }
  })]
}

# Makes the GPUs schedulable (nvidia.com/gpu); the AL2023 NVIDIA AMI brings the driver.
resource "helm_release" "nvidia_device_plugin" {
  name             = "nvidia-device-plugin"
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = "0.17.1"
  namespace        = "nvidia-device-plugin"
  create_namespace = true

  values = [yamlencode({
    nodeSelector = { "themis.dev/pool" = "gpu" }
    tolerations  = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
  })]
}

module "kuberay" {
  source = "../../modules/kuberay"

  depends_on = [module.eks]
}
