# terraform test with the aws provider mocked. The policy documents are rendered by the mocked
# provider too, so the assertions read the module's inputs to those documents (the plan's
# statement blocks), not JSON.
mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
}

variables {
  name              = "themis-ray"
  oidc_provider_arn = "arn:aws:iam::111122223333:oidc-provider/oidc.eks.us-west-2.amazonaws.com/id/ABC"
  oidc_issuer_url   = "https://oidc.eks.us-west-2.amazonaws.com/id/ABC"
  service_accounts  = ["themis:themis-ray"]
  s3_bucket_arns    = ["arn:aws:s3:::themis-runs"]
}

run "trust_is_limited_to_the_service_account" {
  command = plan

  assert {
    condition = toset(one([
      for c in one(data.aws_iam_policy_document.assume.statement).condition : c.values if c.variable == "oidc.eks.us-west-2.amazonaws.com/id/ABC:sub"
    ])) == toset(["system:serviceaccount:themis:themis-ray"])
    error_message = "only system:serviceaccount:themis:themis-ray may assume the role"
  }

  assert {
    condition     = toset(one(one(data.aws_iam_policy_document.assume.statement).principals).identifiers) == toset([var.oidc_provider_arn])
    error_message = "the trust must name the cluster's OIDC provider"
  }
}

run "objects_of_the_run_bucket_only" {
  command = plan

  assert {
    condition     = toset(one([for s in data.aws_iam_policy_document.s3[0].statement : s.resources if s.sid == "ReadWriteRuns"])) == toset(["arn:aws:s3:::themis-runs/*"])
    error_message = "object access is limited to the bucket's objects"
  }

  assert {
    condition     = length(aws_iam_role_policy.extra) == 0
    error_message = "no extra policy unless one is given"
  }
}

run "a_bad_service_account_is_refused" {
  command = plan

  variables {
    service_accounts = ["themis-ray"]
  }

  expect_failures = [var.service_accounts]
}
