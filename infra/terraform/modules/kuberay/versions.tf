terraform {
  required_version = ">= 1.7"

  required_providers {
    helm = {
      source  = "hashicorp/helm"
      version = ">= 2.12, < 3.0" # v2 provider syntax; values are passed as YAML, which v3 keeps
    }
  }
}
