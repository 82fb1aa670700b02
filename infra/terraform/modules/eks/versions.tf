terraform {
  required_version = ">= 1.7" # mock_provider in `terraform test`

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 6.0"
    }
  }
}
