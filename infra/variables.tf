variable "region" {
  description = "AWS region of the bucket. Keep cluster/aws.yaml's provider.region the same: cross-region S3 reads are slow and billed."
  type        = string
  default     = "us-east-1"
}

variable "bucket_name" {
  description = "Name of the imgrec bucket (data/, weights/, runs/, sweeps/, predictions/, scratch/). Empty: imgrec-<account id>-<region>, which is globally unique."
  type        = string
  default     = ""
}

variable "name_prefix" {
  description = "Prefix of IAM names. The instance profiles <prefix>-ray-head and <prefix>-ray-cluster are referenced by name in cluster/aws.yaml."
  type        = string
  default     = "imgrec"
}

variable "ray_cluster_name" {
  description = "cluster_name in cluster/aws.yaml. The head role may only start, tag and terminate instances carrying this ray-cluster-name tag."
  type        = string
  default     = "imgrec"
}

variable "worker_instance_types" {
  description = "Instance types the head role may launch as workers: the InstanceType of every worker node type in cluster/aws.yaml (g6.2xlarge is the documented drop-in for the GPU group)."
  type        = list(string)
  default     = ["c6i.4xlarge", "g5.2xlarge", "g6.2xlarge"]
}

variable "ami_owners" {
  description = "ec2:Owner values of the AMIs the head role may launch workers from: Canonical (Ubuntu) and \"amazon\" (AWS Deep Learning AMIs). Add your account ID for your own images."
  type        = list(string)
  default     = ["099720109477", "amazon"]
}

variable "vpc_id" {
  description = "VPC the head role may launch workers into. Empty: the region's default VPC, where `ray up` places the cluster unless node_config sets SubnetIds."
  type        = string
  default     = ""
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept before it is purged (the undo window for overwrites and checkpoint pruning)."
  type        = number
  default     = 30
}

variable "scratch_expiry_days" {
  description = "Days after which objects under scratch/ are expired."
  type        = number
  default     = 7
}

variable "abort_multipart_days" {
  description = "Days after which unfinished multipart uploads (killed jobs) are aborted and their parts freed."
  type        = number
  default     = 7
}

variable "access_log_retention_days" {
  description = "Days S3 server access logs are kept in the log bucket."
  type        = number
  default     = 365
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the bucket KMS key is deleted after `terraform destroy` (7-30). Data encrypted with it is unreadable once it is gone."
  type        = number
  default     = 30
}

variable "force_destroy" {
  description = "Allow `terraform destroy` to delete non-empty buckets. Keep false outside throwaway accounts: it deletes every checkpoint."
  type        = bool
  default     = false
}

# --- optional: IAM Roles for Service Accounts (EKS + KubeRay, cluster/kuberay.yaml)

variable "eks_oidc_issuer" {
  description = "EKS cluster OIDC issuer without https:// (e.g. oidc.eks.us-east-1.amazonaws.com/id/ABC123). Empty: no IRSA role is created."
  type        = string
  default     = ""
}

variable "k8s_namespace" {
  description = "Kubernetes namespace of the RayCluster (IRSA trust condition)."
  type        = string
  default     = "imgrec"
}

variable "k8s_service_account" {
  description = "Kubernetes ServiceAccount the Ray worker pods run as (IRSA trust condition of the worker role); matches cluster/kuberay.yaml."
  type        = string
  default     = "imgrec-ray"
}

variable "k8s_head_service_account" {
  description = "Kubernetes ServiceAccount the Ray head pod runs as (IRSA trust condition of the head role); matches cluster/kuberay.yaml."
  type        = string
  default     = "imgrec-ray-head"
}
