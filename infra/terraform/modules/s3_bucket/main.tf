# The object store of Themis runs: data, checkpoints, the exported judge and reports.
# Versioned, encrypted with KMS, closed to the public; checkpoints expire, the rest stays.

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Access logs need a second bucket to hold them; CloudTrail data events cover audits where an organisation wants them.
  #checkov:skip=CKV_AWS_144:Replication doubles the storage bill; versioning guards against overwrites and a run can be re-run from its manifest's config.
  #checkov:skip=CKV2_AWS_62:No consumer of object events: stages read their inputs when they start.
  bucket        = var.name
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced" # no ACLs: access is IAM only (IRSA)
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled" # an overwritten manifest or model can be recovered
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true # one KMS call per object batch, not per request
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  # Ray Train checkpoints are large and only needed to resume training; the exported model/ and
  # everything else stay. S3 filters match prefixes, not patterns, hence one rule per run name
  # (the layout is <runs_prefix>/<run name>/checkpoints/, see themis/storage.py).
  dynamic "rule" {
    for_each = toset(var.checkpoint_run_names)

    content {
      id     = "expire-checkpoints-${rule.value}"
      status = "Enabled"

      filter {
        prefix = "${var.runs_prefix}/${rule.value}/checkpoints/"
      }

      expiration {
        days = var.checkpoint_expiration_days
      }

      noncurrent_version_expiration {
        noncurrent_days = 1 # a deleted checkpoint is not worth keeping as an old version
      }
    }
  }

  rule {
    id     = "expire-old-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

# Deny every request that does not use TLS.
resource "aws_s3_bucket_policy" "tls_only" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.tls_only.json

  depends_on = [aws_s3_bucket_public_access_block.this]
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}
