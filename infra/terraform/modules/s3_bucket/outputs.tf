output "bucket_name" {
  description = "The bucket's name."
  value       = aws_s3_bucket.this.bucket
}

output "bucket_arn" {
  description = "The bucket's ARN, for IAM policies."
  value       = aws_s3_bucket.this.arn
}

output "storage_root" {
  description = "The Themis run root: set run.storage.root (k8s overlay settings: storageRoot) to it."
  value       = "s3://${aws_s3_bucket.this.bucket}/${var.runs_prefix}"
}
