# imgrec on AWS: one bucket for images, weights, runs, sweeps and predictions,
# and the IAM identities the Ray cluster runs as.
#
#   terraform -chdir=infra init && terraform -chdir=infra apply
#
# Bucket layout and what each role may do there (policies s3_head, s3_worker):
#   prefix                  head (drivers, Tune, autoscaler)   workers (Train/Data/trial drivers)
#   data/ weights/          read                               read
#   runs/                   read, write, delete                read, write; delete only runs/*/checkpoint_*/
#   sweeps/                 read, write, delete                read; write only sweeps/*/trials/* (and the
#                                                              empty folder markers pyarrow creates);
#                                                              delete only sweeps/*/trials/*/checkpoint_*/
#   runs/.cache/ sweeps/.cache/ (the decoded cache: imgrec.data.cache)
#                           read, write, delete                read, write (decode tasks write shards)
#   predictions/ scratch/   read, write, delete                nothing
# Workers may never write Ray Tune's state files (*.pkl, *-state-*.json): Tune
# unpickles them on the head when a sweep is resumed. Every upload must use the
# bucket's KMS key (bucket policy). A best.json under runs/ or sweeps/ points at
# live checkpoints, so no rule in this file ever expires a *current* object there.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  bucket_name     = var.bucket_name != "" ? var.bucket_name : "imgrec-${local.account_id}-${var.region}"
  log_bucket_name = "${local.bucket_name}-logs"
}

# --------------------------------------------------------------------------- encryption key
#
# SSE-KMS with a customer-managed key rather than SSE-S3: access to the data
# then needs both an S3 grant and a KMS grant (a mistaken bucket policy alone
# cannot expose it), every decrypt is in CloudTrail, and the key can be
# disabled to cut all access at once. The usual objection, KMS request cost
# on millions of small image reads, is removed by S3 Bucket Keys
# (bucket_key_enabled below), which cut KMS calls by ~99%.

resource "aws_kms_key" "bucket" {
  description             = "imgrec bucket default encryption (SSE-KMS)"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms_key.json
}

resource "aws_kms_alias" "bucket" {
  name          = "alias/${var.name_prefix}-bucket"
  target_key_id = aws_kms_key.bucket.key_id
}

# The AWS default key policy: the account administers the key, and IAM
# policies (such as the cluster's below) decide who may use it. Without this
# statement the key would be unmanageable.
data "aws_iam_policy_document" "kms_key" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" means "this key"; delegating to the account's IAM is the AWS default key policy.
  #checkov:skip=CKV_AWS_111:Same: "*" in a key policy is this key only; who may encrypt/decrypt is decided by IAM (policies s3_head, s3_worker).
  #checkov:skip=CKV_AWS_356:Same: "*" in a key policy is this key only, not every resource.
  statement {
    sid       = "AccountAdministersKeyViaIAM"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
}

# --------------------------------------------------------------------------- the bucket

resource "aws_s3_bucket" "main" {
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; versioning + the 30-day noncurrent window cover mistakes, and images/runs can be re-uploaded or retrained.
  #checkov:skip=CKV2_AWS_62:No consumer of S3 event notifications exists; jobs are submitted explicitly with `ray job submit`.
  bucket        = local.bucket_name
  force_destroy = var.force_destroy
}

# ACLs off: every object belongs to the bucket owner, access is by policy only.
resource "aws_s3_bucket_ownership_controls" "main" {
  bucket = aws_s3_bucket.main.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "main" {
  bucket                  = aws_s3_bucket.main.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Versioning makes overwrites and deletes (checkpoint pruning, a re-run writing
# the same path) recoverable for var.noncurrent_version_days.
resource "aws_s3_bucket_versioning" "main" {
  bucket = aws_s3_bucket.main.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "main" {
  bucket = aws_s3_bucket.main.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.bucket.arn
    }
    bucket_key_enabled = true
  }
}

# Who read or deleted what (S3 server access logs), into a separate bucket.
resource "aws_s3_bucket_logging" "main" {
  bucket        = aws_s3_bucket.main.id
  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "s3-access/${local.bucket_name}/"
}

resource "aws_s3_bucket_lifecycle_configuration" "main" {
  bucket = aws_s3_bucket.main.id

  # Whole bucket, but only history: replaced/deleted versions are purged after
  # the undo window, and delete markers with nothing behind them are cleaned
  # up. Current objects (live checkpoints, best.json, images) are untouched.
  rule {
    id     = "purge-noncurrent-versions"
    status = "Enabled"
    # Whole bucket. `filter {}` would mean the same but warns on AWS provider >= 5.90.
    filter {
      prefix = ""
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    expiration {
      expired_object_delete_marker = true
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_multipart_days
    }
  }

  # scratch/ is temporary by contract: current objects expire too.
  rule {
    id     = "expire-scratch"
    status = "Enabled"
    filter {
      prefix = "scratch/"
    }
    expiration {
      days = var.scratch_expiry_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  # Rules on a versioned bucket must be created after versioning is on.
  depends_on = [aws_s3_bucket_versioning.main]
}

# TLS only (and TLS 1.2+): plain-HTTP requests are denied for everyone; so are
# uploads that bypass the bucket's KMS key.
data "aws_iam_policy_document" "main_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.main.arn, "${aws_s3_bucket.main.arn}/*"]
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
  statement {
    sid       = "DenyOutdatedTLS"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.main.arn, "${aws_s3_bucket.main.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }

  # Every object is encrypted with the bucket key. An upload that names no
  # encryption gets the bucket default (SSE-KMS with this key), so only uploads
  # that ask for something else are refused: SSE-S3 or DSSE, another KMS key,
  # or customer-provided keys (SSE-C, which KMS never sees). The key header is
  # compared as a key ARN: name the key by ARN, or leave the header out.
  statement {
    sid       = "DenyUploadsNotUsingSseKms"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.main.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["false"]
    }
    condition {
      test     = "StringNotEquals"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["aws:kms"]
    }
  }
  statement {
    sid       = "DenyUploadsWithAnotherKmsKey"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.main.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = ["false"]
    }
    condition {
      test     = "StringNotEquals"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = [aws_kms_key.bucket.arn]
    }
  }
  statement {
    sid       = "DenyUploadsWithCustomerKeys"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.main.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption-customer-algorithm"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "main" {
  bucket = aws_s3_bucket.main.id
  policy = data.aws_iam_policy_document.main_bucket.json
  # A bucket policy put before the public access block can race it.
  depends_on = [aws_s3_bucket_public_access_block.main]
}

# --------------------------------------------------------------------------- access-log bucket

resource "aws_s3_bucket" "logs" {
  #checkov:skip=CKV_AWS_144:Access logs are an audit trail, not data to restore; replication doubles cost for no recovery benefit.
  #checkov:skip=CKV2_AWS_62:Nothing consumes events for log objects.
  #checkov:skip=CKV_AWS_145:S3 server access log delivery supports only SSE-S3 on the target bucket, not SSE-KMS.
  bucket        = local.log_bucket_name
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256" # the only option for server access log targets
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    # Whole bucket. `filter {}` would mean the same but warns on AWS provider >= 5.90.
    filter {
      prefix = ""
    }
    expiration {
      days = var.access_log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
  depends_on = [aws_s3_bucket_versioning.logs]
}

# With ACLs disabled, log delivery is granted by bucket policy, and only for
# logs of our own bucket in our own account (confused-deputy guard).
data "aws_iam_policy_document" "logs_bucket" {
  statement {
    sid       = "S3ServerAccessLogDelivery"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.logs.arn}/s3-access/*"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.main.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.logs.arn, "${aws_s3_bucket.logs.arn}/*"]
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
  # As on the main bucket. Log delivery is not affected: the logging service
  # sends its requests over TLS 1.2 or later (and a request without the key
  # matches no NumericLessThan).
  statement {
    sid       = "DenyOutdatedTLS"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.logs.arn, "${aws_s3_bucket.logs.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "logs" {
  bucket     = aws_s3_bucket.logs.id
  policy     = data.aws_iam_policy_document.logs_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.logs]
}

# --------------------------------------------------------------------------- what the cluster may do in S3
#
# Two policies: s3_head for the head node (job drivers, the Tune driver, Ray
# Train's controller for `imgrec train`, batch prediction's driver, reports)
# and s3_worker for worker nodes (Ray Data, Train workers, and Tune's per-trial
# drivers, which may be placed on any node together with their Train
# controller). What both need is written once, in s3_common, and merged into
# each (source_policy_documents). Each role's prefixes are spelled out once,
# in the locals below, so that a reviewer (and tests/test_iam_policy.py, which
# evaluates the policies) sees exactly what is granted where.
#
# Listing: s3:ListBucket also authorises HeadBucket, which carries no s3:prefix.
# pyarrow's create_dir(recursive) starts with HeadBucket and fails on a 403
# (Ray Train creates every run and checkpoint folder that way), so a request
# without a prefix must stay allowed ("HeadBucket" below). IAM cannot tell it
# apart from a ListObjects call that sends no prefix: such a call lists every
# key name in the bucket (names only; reading still needs s3:GetObject on the
# prefix). Every listing *with* a prefix is limited to the role's own prefixes.

locals {
  # The top-level prefixes each role may read: it may list them ("p" and
  # "p/*") and HEAD their root keys ("HeadPrefixRoots").
  s3_head_prefixes   = ["data", "weights", "runs", "sweeps", "predictions", "scratch"]
  s3_worker_prefixes = ["data", "weights", "runs", "sweeps"]
}

# Both roles.
data "aws_iam_policy_document" "s3_common" {
  statement {
    sid       = "HeadBucket"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.main.arn]
    condition {
      test     = "Null"
      variable = "s3:prefix"
      values   = ["true"]
    }
  }

  # Inputs: images and backbone weights are read, never written by jobs.
  statement {
    sid     = "ReadInputs"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.main.arn}/data/*",
      "${aws_s3_bucket.main.arn}/weights/*",
    ]
  }

  # SSE-KMS: S3 uses the key on the caller's behalf; only through S3 in this region.
  statement {
    sid       = "UseBucketKeyViaS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.bucket.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "s3_head" {
  source_policy_documents = [data.aws_iam_policy_document.s3_common.json]

  statement {
    sid       = "ListOwnPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.main.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = flatten([for p in local.s3_head_prefixes : [p, "${p}/*"]])
    }
  }

  # Outputs: reports, best.json, sweep results and Tune's state, predictions.
  # Delete: checkpoint pruning of `imgrec train` runs (Train's controller runs
  # on the driver's node), --overwrite, stale prediction parts. It only adds a
  # delete marker (no s3:DeleteObjectVersion), so whatever is deleted stays
  # recoverable for var.noncurrent_version_days. Multipart: large uploads.
  statement {
    sid = "ReadWriteOutputs"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [
      "${aws_s3_bucket.main.arn}/runs/*",
      "${aws_s3_bucket.main.arn}/sweeps/*",
      "${aws_s3_bucket.main.arn}/predictions/*",
      "${aws_s3_bucket.main.arn}/scratch/*",
    ]
  }

  # pyarrow's get_file_info("bucket/runs") first HEADs an object named
  # exactly "runs". Without s3:GetObject on that key S3 answers 403, not 404,
  # and pyarrow raises instead of reporting "not a file". No such objects exist.
  statement {
    sid       = "HeadPrefixRoots"
    actions   = ["s3:GetObject"]
    resources = formatlist("${aws_s3_bucket.main.arn}/%s", local.s3_head_prefixes)
  }
}

# Workers. What they write, and why:
#  * runs/<run>/: Train rank 0 uploads checkpoint_*/ and writes history.json,
#    tensorboard/, replicas/ (every rank) and the fault marker; a Train
#    controller placed on a worker (a driver submitted with entrypoint
#    resources) writes .validate_storage_marker, checkpoint_manager_snapshot.json
#    and prunes checkpoint_*/.
#  * sweeps/<sweep>/trials/<trial>/: the same per trial, plus what the trial's
#    driver writes (evaluation, report, plots) and its controller's pruning:
#    Tune places trial drivers on any node.
#  * the empty "folder" objects pyarrow's create_dir PUTs for every parent
#    (sweeps/, sweeps/<sweep>/, sweeps/<sweep>/trials/); a 403 on one fails
#    the upload. A key ending in "/" is never a file Tune reads.
# Nothing else: sweep.json, best.json, the results and Tune's experiment state
# (top level of the sweep folder) come from the sweep driver on the head, and
# predictions from the prediction driver.
data "aws_iam_policy_document" "s3_worker" {
  source_policy_documents = [data.aws_iam_policy_document.s3_common.json]

  statement {
    sid       = "ListOwnPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.main.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = flatten([for p in local.s3_worker_prefixes : [p, "${p}/*"]])
    }
  }

  # Checkpoints to restore from or predict with (images and weights: s3_common).
  statement {
    sid     = "ReadCheckpoints"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.main.arn}/runs/*",
      "${aws_s3_bucket.main.arn}/sweeps/*",
    ]
  }

  statement {
    sid = "WriteRunsAndTrials"
    actions = [
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [
      "${aws_s3_bucket.main.arn}/runs/*",
      "${aws_s3_bucket.main.arn}/sweeps/*/trials/*",
      "${aws_s3_bucket.main.arn}/sweeps/",
      "${aws_s3_bucket.main.arn}/sweeps/*/",
    ]
  }

  # The decoded cache's shards, written by the Ray Data decode tasks of a sweep (a run's
  # cache, runs/.cache/, is under runs/* above). Reads: ReadCheckpoints. The head lists,
  # removes and writes entry.json (s3_head).
  statement {
    sid       = "WriteSweepDecodedCache"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.main.arn}/sweeps/.cache/*"]
  }

  # Ray's checkpoint pruning (delete_dir of checkpoint_<time>/: its objects
  # and its folder marker). checkpoint_*/* does not match the controller's
  # checkpoint_manager_snapshot.json beside the folders.
  statement {
    sid     = "PruneCheckpoints"
    actions = ["s3:DeleteObject"]
    resources = [
      "${aws_s3_bucket.main.arn}/runs/*/checkpoint_*/*",
      "${aws_s3_bucket.main.arn}/sweeps/*/trials/*/checkpoint_*/*",
    ]
  }

  # Ray Tune's state, which the head unpickles on `imgrec tune --resume` (and,
  # for error.pkl, when it reads the results): tuner.pkl, searcher-state-*.pkl,
  # callback-states-*.pkl, <trial>/error.pkl, and the cloudpickled .json files
  # experiment_state-*, basic-variant-state-*, search_gen_state-*. Tune reads
  # them only at the top of the sweep folder, where the Allow above grants
  # workers nothing; this Deny, bucket-wide, also covers a sweep stored under
  # runs/ or inside another sweep's trials/, and the folder-marker keys.
  # Workers never write such names.
  statement {
    sid     = "DenyTuneStateFiles"
    effect  = "Deny"
    actions = ["s3:PutObject"]
    resources = [
      "${aws_s3_bucket.main.arn}/*.pkl*",
      "${aws_s3_bucket.main.arn}/*experiment_state-*",
      "${aws_s3_bucket.main.arn}/*basic-variant-state-*",
      "${aws_s3_bucket.main.arn}/*search_gen_state-*",
      "${aws_s3_bucket.main.arn}/*searcher-state-*",
    ]
  }

  # See s3_head.
  statement {
    sid       = "HeadPrefixRoots"
    actions   = ["s3:GetObject"]
    resources = formatlist("${aws_s3_bucket.main.arn}/%s", local.s3_worker_prefixes)
  }
}

resource "aws_iam_policy" "s3_head" {
  name        = "${var.name_prefix}-s3-head"
  description = "imgrec Ray head: read data/ weights/, read/write/delete runs/ sweeps/ predictions/ scratch/"
  policy      = data.aws_iam_policy_document.s3_head.json
}

resource "aws_iam_policy" "s3_worker" {
  name        = "${var.name_prefix}-s3-worker"
  description = "imgrec Ray workers: read data/ weights/ runs/ sweeps/, write runs and sweep trials, prune checkpoints"
  policy      = data.aws_iam_policy_document.s3_worker.json
}

# --------------------------------------------------------------------------- EC2 identities (cluster/aws.yaml)

data "aws_iam_policy_document" "ec2_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# Worker nodes (CPU and GPU groups): S3 only, the worker policy.
resource "aws_iam_role" "cluster" {
  name               = "${var.name_prefix}-ray-cluster"
  description        = "imgrec Ray worker nodes: S3 worker access to the imgrec bucket"
  assume_role_policy = data.aws_iam_policy_document.ec2_trust.json
}

resource "aws_iam_role_policy_attachment" "cluster_s3" {
  role       = aws_iam_role.cluster.name
  policy_arn = aws_iam_policy.s3_worker.arn
}

resource "aws_iam_instance_profile" "cluster" {
  name = "${var.name_prefix}-ray-cluster"
  role = aws_iam_role.cluster.name
}

# Head node: the head's S3 access (job drivers run there and write reports,
# best.json, Tune's state) plus what the Ray autoscaler needs to start and stop workers.
# Without a profile of our own, `ray up` would create ray-autoscaler-v1 with
# AmazonEC2FullAccess + AmazonS3FullAccess.
resource "aws_iam_role" "head" {
  name               = "${var.name_prefix}-ray-head"
  description        = "imgrec Ray head node: S3 access + Ray autoscaler"
  assume_role_policy = data.aws_iam_policy_document.ec2_trust.json
}

resource "aws_iam_role_policy_attachment" "head_s3" {
  role       = aws_iam_role.head.name
  policy_arn = aws_iam_policy.s3_head.arn
}

resource "aws_iam_instance_profile" "head" {
  name = "${var.name_prefix}-ray-head"
  role = aws_iam_role.head.name
}

# The VPC workers are launched into: var.vpc_id, or the region's default VPC
# (where `ray up` puts the cluster unless node_config names SubnetIds).
data "aws_vpc" "default" {
  count   = var.vpc_id == "" ? 1 : 0
  default = true
}

locals {
  ec2_arn = "arn:${local.partition}:ec2:${var.region}:${local.account_id}"
  vpc_id  = var.vpc_id != "" ? var.vpc_id : data.aws_vpc.default[0].id
  vpc_arn = "${local.ec2_arn}:vpc/${local.vpc_id}"
}

data "aws_iam_policy_document" "autoscaler" {
  # Read-only EC2 calls have no resource-level permissions in IAM.
  statement {
    sid = "Describe"
    actions = [
      "ec2:DescribeInstances",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeImages",
      "ec2:DescribeSubnets",
      "ec2:DescribeSecurityGroups",
      "ec2:DescribeKeyPairs",
    ]
    resources = ["*"]
  }

  # Launch workers only as this cluster's nodes: the new instance carries the
  # cluster's tag (Ray tags every node with ray-cluster-name at launch), is one
  # of the worker instance types, gets the worker profile and requires IMDSv2
  # (cluster/aws.yaml MetadataOptions).
  statement {
    sid       = "LaunchTaggedWorkerInstances"
    actions   = ["ec2:RunInstances"]
    resources = ["${local.ec2_arn}:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/ray-cluster-name"
      values   = [var.ray_cluster_name]
    }
    condition {
      test     = "StringEquals"
      variable = "ec2:InstanceType"
      values   = var.worker_instance_types
    }
    condition {
      test     = "ArnEquals"
      variable = "ec2:InstanceProfile"
      values   = [aws_iam_instance_profile.cluster.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "ec2:MetadataHttpTokens"
      values   = ["required"]
    }
  }

  # AMIs only from the publishers cluster/aws.yaml resolves them from
  # (Canonical's Ubuntu, the AWS Deep Learning AMIs).
  statement {
    sid       = "LaunchFromTrustedImages"
    actions   = ["ec2:RunInstances"]
    resources = ["arn:${local.partition}:ec2:${var.region}::image/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:Owner"
      values   = var.ami_owners
    }
  }

  # Into the cluster's VPC only.
  statement {
    sid     = "LaunchIntoClusterVpc"
    actions = ["ec2:RunInstances"]
    resources = [
      "${local.ec2_arn}:subnet/*",
      "${local.ec2_arn}:security-group/*",
      "${local.ec2_arn}:network-interface/*",
    ]
    condition {
      test     = "ArnEquals"
      variable = "ec2:Vpc"
      values   = [local.vpc_arn]
    }
  }

  # Encrypted root volumes only (every node type sets Ebs.Encrypted).
  statement {
    sid       = "LaunchWithEncryptedVolumes"
    actions   = ["ec2:RunInstances"]
    resources = ["${local.ec2_arn}:volume/*"]
    condition {
      test     = "Bool"
      variable = "ec2:Encrypted"
      values   = ["true"]
    }
  }

  # The other resources a RunInstances call touches.
  statement {
    sid     = "LaunchUsingResources"
    actions = ["ec2:RunInstances"]
    resources = [
      "${local.ec2_arn}:key-pair/*",
      "${local.ec2_arn}:spot-instances-request/*",
    ]
  }

  statement {
    sid       = "TagAtLaunch"
    actions   = ["ec2:CreateTags"]
    resources = ["${local.ec2_arn}:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["RunInstances"]
    }
  }

  # Ray rewrites node-status tags, and terminates idle workers: own nodes only.
  statement {
    sid       = "ManageOwnNodes"
    actions   = ["ec2:CreateTags", "ec2:TerminateInstances"]
    resources = ["${local.ec2_arn}:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/ray-cluster-name"
      values   = [var.ray_cluster_name]
    }
  }

  # Workers get the S3-only profile, never the head's.
  statement {
    sid       = "PassWorkerRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.cluster.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ec2.amazonaws.com"]
    }
  }

  # cluster/aws.yaml names AMIs as resolve:ssm:/aws/service/... public parameters.
  statement {
    sid       = "ResolvePublicAmiParameters"
    actions   = ["ssm:GetParameters", "ssm:GetParameter"]
    resources = ["arn:${local.partition}:ssm:${var.region}::parameter/aws/service/*"]
  }
}

resource "aws_iam_policy" "autoscaler" {
  name        = "${var.name_prefix}-ray-autoscaler"
  description = "imgrec Ray head: launch, tag and terminate this cluster's workers"
  policy      = data.aws_iam_policy_document.autoscaler.json
}

resource "aws_iam_role_policy_attachment" "head_autoscaler" {
  role       = aws_iam_role.head.name
  policy_arn = aws_iam_policy.autoscaler.arn
}

# --------------------------------------------------------------------------- optional: IRSA for KubeRay on EKS
#
# Two ServiceAccounts, as on EC2: the head pod's (head S3 policy; KubeRay
# scales pods itself, so no EC2 rights) and the worker pods' (worker policy).

# One trust policy per ServiceAccount: each role may be assumed only by its own
# pods' ServiceAccount, not by every pod in the EKS cluster.
data "aws_iam_policy_document" "irsa_trust" {
  for_each = var.eks_oidc_issuer == "" ? {} : {
    worker = var.k8s_service_account
    head   = var.k8s_head_service_account
  }
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:oidc-provider/${var.eks_oidc_issuer}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.k8s_namespace}:${each.value}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "irsa" {
  count              = var.eks_oidc_issuer == "" ? 0 : 1
  name               = "${var.name_prefix}-ray-irsa"
  description        = "imgrec KubeRay worker pods (IRSA): S3 worker access to the imgrec bucket"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust["worker"].json
}

resource "aws_iam_role_policy_attachment" "irsa_s3" {
  count      = var.eks_oidc_issuer == "" ? 0 : 1
  role       = aws_iam_role.irsa[0].name
  policy_arn = aws_iam_policy.s3_worker.arn
}

resource "aws_iam_role" "irsa_head" {
  count              = var.eks_oidc_issuer == "" ? 0 : 1
  name               = "${var.name_prefix}-ray-irsa-head"
  description        = "imgrec KubeRay head pod (IRSA): S3 head access to the imgrec bucket"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust["head"].json
}

resource "aws_iam_role_policy_attachment" "irsa_head_s3" {
  count      = var.eks_oidc_issuer == "" ? 0 : 1
  role       = aws_iam_role.irsa_head[0].name
  policy_arn = aws_iam_policy.s3_head.arn
}
