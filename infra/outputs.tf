output "bucket" {
  description = "The imgrec bucket."
  value       = aws_s3_bucket.main.id
}

output "bucket_arn" {
  value = aws_s3_bucket.main.arn
}

output "region" {
  value = var.region
}

output "kms_key_arn" {
  description = "Bucket encryption key. Anyone uploading with their own credentials (imgrec data upload) needs kms:GenerateDataKey on it."
  value       = aws_kms_key.bucket.arn
}

output "log_bucket" {
  value = aws_s3_bucket.logs.id
}

output "head_instance_profile" {
  description = "IamInstanceProfile.Name of the head node in cluster/aws.yaml."
  value       = aws_iam_instance_profile.head.name
}

output "worker_instance_profile" {
  description = "IamInstanceProfile.Name of the worker node types in cluster/aws.yaml."
  value       = aws_iam_instance_profile.cluster.name
}

output "irsa_role_arn" {
  description = "eks.amazonaws.com/role-arn annotation for the workers' ServiceAccount (imgrec-ray) in cluster/kuberay.yaml (empty without eks_oidc_issuer)."
  value       = one(aws_iam_role.irsa[*].arn)
}

output "irsa_head_role_arn" {
  description = "eks.amazonaws.com/role-arn annotation for the head's ServiceAccount (imgrec-ray-head) in cluster/kuberay.yaml (empty without eks_oidc_issuer)."
  value       = one(aws_iam_role.irsa_head[*].arn)
}

output "uris" {
  description = "Where the jobs read and write."
  value = {
    data        = "s3://${aws_s3_bucket.main.id}/data"
    weights     = "s3://${aws_s3_bucket.main.id}/weights"
    runs        = "s3://${aws_s3_bucket.main.id}/runs"
    sweeps      = "s3://${aws_s3_bucket.main.id}/sweeps"
    predictions = "s3://${aws_s3_bucket.main.id}/predictions"
    scratch     = "s3://${aws_s3_bucket.main.id}/scratch"
  }
}
