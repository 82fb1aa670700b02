# terraform test with the aws provider mocked: the plan's shape, no AWS account needed.
mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }

  mock_data "aws_partition" {
    defaults = {
      partition = "aws"
    }
  }

  # The provider checks ARNs it is handed, so mocked ARNs must look like ARNs.
  mock_resource "aws_iam_role" {
    defaults = {
      arn = "arn:aws:iam::111122223333:role/mocked"
    }
  }

  mock_resource "aws_kms_key" {
    defaults = {
      arn = "arn:aws:kms:us-west-2:111122223333:key/00000000-0000-0000-0000-000000000000"
    }
  }

  mock_resource "aws_eks_cluster" {
    defaults = {
      identity              = [{ oidc = [{ issuer = "https://oidc.eks.us-west-2.amazonaws.com/id/ABC" }] }]
      certificate_authority = [{ data = "bW9ja2Vk" }]
    }
  }
}

variables {
  name                = "themis"
  subnet_ids          = ["subnet-a", "subnet-b"]
  public_access_cidrs = ["203.0.113.0/24"]
}

run "gpu_group_scales_from_zero_and_takes_only_gpu_pods" {
  command = apply

  assert {
    condition     = aws_eks_node_group.gpu.scaling_config[0].min_size == 0 && aws_eks_node_group.gpu.scaling_config[0].max_size == 4
    error_message = "the GPU group scales between 0 and 4 nodes"
  }

  assert {
    condition     = one(aws_eks_node_group.gpu.taint).key == "nvidia.com/gpu" && one(aws_eks_node_group.gpu.taint).effect == "NO_SCHEDULE"
    error_message = "GPU nodes are tainted so that only GPU workers land there"
  }

  assert {
    condition     = aws_eks_node_group.gpu.ami_type == "AL2023_x86_64_NVIDIA"
    error_message = "GPU nodes need the NVIDIA AMI"
  }

  assert {
    condition     = output.node_groups.gpu.pool == "gpu" && output.node_groups.cpu.pool == "cpu"
    error_message = "pools are labelled as the k8s overlay selects them"
  }

  assert {
    condition     = output.oidc_issuer_url == "https://oidc.eks.us-west-2.amazonaws.com/id/ABC"
    error_message = "the OIDC issuer is passed through for IRSA"
  }
}

run "control_plane_is_encrypted_logged_and_fenced" {
  command = plan

  assert {
    condition     = one(aws_eks_cluster.this.encryption_config).resources == toset(["secrets"])
    error_message = "secrets are encrypted with the cluster's KMS key"
  }

  assert {
    condition     = length(aws_eks_cluster.this.enabled_cluster_log_types) == 5
    error_message = "every control plane log type is on"
  }

  assert {
    condition     = aws_kms_key.secrets.enable_key_rotation
    error_message = "the KMS key rotates"
  }
}

run "the_api_is_never_open_to_everyone" {
  command = plan

  variables {
    public_access_cidrs = ["0.0.0.0/0"]
  }

  expect_failures = [var.public_access_cidrs]
}
