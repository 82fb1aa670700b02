# terraform test, offline: the aws provider is mocked, so plan and apply need no credentials.
mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
}

variables {
  name = "themis-runs-test"
}

run "bucket_is_private_versioned_and_encrypted" {
  command = apply

  assert {
    condition     = aws_s3_bucket_versioning.this.versioning_configuration[0].status == "Enabled"
    error_message = "versioning must be on"
  }

  assert {
    condition = alltrue([
      aws_s3_bucket_public_access_block.this.block_public_acls,
      aws_s3_bucket_public_access_block.this.block_public_policy,
      aws_s3_bucket_public_access_block.this.ignore_public_acls,
      aws_s3_bucket_public_access_block.this.restrict_public_buckets,
    ])
    error_message = "all four public access blocks must be on"
  }

  assert {
    condition     = one(one(aws_s3_bucket_server_side_encryption_configuration.this.rule).apply_server_side_encryption_by_default).sse_algorithm == "aws:kms"
    error_message = "default encryption must be KMS"
  }

  assert {
    condition     = output.storage_root == "s3://themis-runs-test/runs"
    error_message = "storage_root must be s3://<bucket>/<runs_prefix>"
  }
}

run "checkpoints_of_each_run_expire_and_nothing_else" {
  command = plan

  variables {
    checkpoint_run_names       = ["cluster", "exp1"]
    checkpoint_expiration_days = 14
  }

  assert {
    condition = toset([
      for r in aws_s3_bucket_lifecycle_configuration.this.rule : one(r.filter).prefix if length(r.expiration) > 0
    ]) == toset(["runs/cluster/checkpoints/", "runs/exp1/checkpoints/"])
    error_message = "exactly the runs' checkpoint folders expire"
  }

  assert {
    condition = alltrue([
      for r in aws_s3_bucket_lifecycle_configuration.this.rule : one(r.expiration).days == 14 if length(r.expiration) > 0
    ])
    error_message = "checkpoints expire after checkpoint_expiration_days"
  }
}

run "bad_bucket_name_is_refused" {
  command = plan

  variables {
    name = "Themis_Runs"
  }

  expect_failures = [var.name]
}
