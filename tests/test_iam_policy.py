"""What the cluster's roles may do, evaluated from infra/*.tf: (role, action, key) cases
run through a small IAM policy evaluator over the parsed Terraform (python-hcl2; no
`terraform init`, no provider, no AWS). The documents are read as Terraform exports them
(source_policy_documents merged, the prefix lists expanded: load_terraform
in tests/test_cluster_infra.py, which refuses any expression it does not evaluate).

The evaluator follows AWS's rules for the parts these policies use:
  * an explicit Deny in any applicable statement wins; otherwise an Allow in the
    role's identity policies or in the bucket policy allows; otherwise implicit deny;
  * actions match case-insensitively with ``*``/``?``, resources case-sensitively
    (``*`` crosses ``/``, as in IAM);
  * the conditions of a statement are ANDed, the values of one condition ORed;
    operators String(Not)Equals, String(Not)Like, ArnEquals/ArnLike, Bool, Null,
    NumericLessThan, each with ``IfExists``; a missing key makes a condition false,
    except for the negated operators, ``...IfExists`` and ``Null``.
  * a bucket policy statement applies to its principals: ``*``, or a service principal
    named exactly (S3 log delivery, which only the logs bucket's policy authorises).
Limits (what it does not model, so what these cases cannot show): NotAction,
NotResource and NotPrincipal (it refuses a statement using them); principals other
than ``*`` in the main bucket's policy; multi-valued request keys (ForAnyValue/ForAllValues);
policy variables; the KMS key policy (it delegates to IAM: see infra/main.tf); SCPs,
permission boundaries and session policies; which context keys AWS really sends
with a request: each case states its keys, as an assumption. A case here is what
the policy text says, not a guarantee that S3 or EC2 agrees.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

import pytest
from test_cluster_infra import _as_list, _default, _statements, load_terraform

ACCOUNT, REGION = "111122223333", "us-east-1"
BUCKET_ARN = "arn:aws:s3:::imgrec-test"
LOGS_BUCKET_ARN = "arn:aws:s3:::imgrec-test-logs"
KMS_KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0000-test"
EC2 = f"arn:aws:ec2:{REGION}:{ACCOUNT}"
VPC_ID = "vpc-0cluster"
WORKER_PROFILE_ARN = f"arn:aws:iam::{ACCOUNT}:instance-profile/imgrec-ray-cluster"

# Values of the references the policies use (what `terraform apply` would fill in).
REFS = {
    "aws_s3_bucket.main.arn": BUCKET_ARN,
    "aws_s3_bucket.logs.arn": LOGS_BUCKET_ARN,
    "aws_kms_key.bucket.arn": KMS_KEY_ARN,
    "aws_iam_role.cluster.arn": f"arn:aws:iam::{ACCOUNT}:role/imgrec-ray-cluster",
    "aws_iam_instance_profile.cluster.arn": WORKER_PROFILE_ARN,
    "local.partition": "aws",
    "local.account_id": ACCOUNT,
    "local.ec2_arn": EC2,
    "local.vpc_arn": f"{EC2}:vpc/{VPC_ID}",
}

# The policies each identity has: the instance profiles' roles in infra/main.tf.
ROLES = {"head": ("s3_head", "autoscaler"), "worker": ("s3_worker",)}


@pytest.fixture(scope="module")
def tf() -> dict:
    return load_terraform()


# --------------------------------------------------------------------------- the evaluator


def _resolver(tf):
    def resolve(value):
        """A policy string with its ${...} references filled in; a lone reference to a
        list variable becomes the list."""
        if isinstance(value, list):
            return [v for item in value for v in _as_list(resolve(item))]
        whole = re.fullmatch(r"\$\{var\.(\w+)\}", value)
        if whole:
            return _default(tf, whole.group(1))

        def one(m):
            ref = m.group(1)
            if ref.startswith("var."):
                return str(_default(tf, ref[4:]))
            if ref not in REFS:
                raise KeyError(f"no test value for ${{{ref}}}: add it to REFS")
            return REFS[ref]

        return re.sub(r"\$\{([^}]+)\}", one, value)

    return resolve


def _glob(pattern: str, value: str, *, case: bool) -> bool:
    regex = fnmatch.translate(pattern)  # * and ? as in IAM; [ ] never occur in these policies
    return re.match(regex, value, 0 if case else re.IGNORECASE) is not None


def _condition_holds(cond: dict, context: dict, resolve) -> bool:
    test, key = cond["test"], cond["variable"]
    values = [str(v).lower() if isinstance(v, bool) else str(v) for v in resolve(_as_list(cond["values"]))]
    present = key in context
    if test == "Null":
        return (not present) == (values == ["true"])
    if_exists = test.endswith("IfExists")
    op = test.removesuffix("IfExists")
    negated = "Not" in op
    if not present:
        return if_exists or negated
    actual = context[key]
    actual = str(actual).lower() if isinstance(actual, bool) else str(actual)
    if op in ("StringEquals", "StringNotEquals", "ArnEquals", "Bool"):
        hit = actual in values
    elif op in ("StringLike", "StringNotLike", "ArnLike"):
        hit = any(_glob(v, actual, case=True) for v in values)
    elif op == "NumericLessThan":
        hit = any(float(actual) < float(v) for v in values)
    else:
        raise NotImplementedError(f"condition operator {test} is not modelled")
    return not hit if negated else hit


def _applies(st: dict, action: str, resource: str, context: dict, resolve) -> bool:
    unmodelled = {"not_actions", "not_resources", "not_principals"} & set(st)
    assert not unmodelled, f"statement {st.get('sid')} uses {unmodelled}: not modelled"
    if not any(_glob(a, action, case=False) for a in _as_list(st["actions"])):
        return False
    if not any(_glob(r, resource, case=True) for r in resolve(_as_list(st["resources"]))):
        return False
    return all(_condition_holds(c, context, resolve) for c in _as_list(st.get("condition", [])))


@dataclass
class Decision:
    effect: str  # "Allow", "Deny" (explicit) or "ImplicitDeny"
    by: list[str] = field(default_factory=list)  # policy.sid of the deciding statements


def _principals(st: dict) -> set[str]:
    """A bucket policy statement's principals as "*" or "Type:identifier"."""
    blocks = _as_list(st.get("principals", []))
    return {"*" if b["type"] == "*" else f"{b['type']}:{i}" for b in blocks for i in _as_list(b["identifiers"])}


def evaluate(tf, role: str, action: str, resource: str, context: dict | None = None) -> Decision:
    docs = tf["data"]["aws_iam_policy_document"]
    statements = [(name, st) for name in ROLES[role] for st in _statements(docs[name])]
    # Resource-based: the main bucket's policy, statements for every principal ("*").
    for st in _statements(docs["main_bucket"]):
        assert _principals(st) == {"*"}, f"main_bucket {st.get('sid')}: principals other than * are not modelled"
        statements.append(("main_bucket", st))
    return _decide(tf, statements, action, resource, context)


def evaluate_service(tf, service: str, bucket_policy: str, action: str, resource: str, context: dict) -> Decision:
    """A request by an AWS service principal, which only the bucket's own policy can allow."""
    statements = [(bucket_policy, st) for st in _statements(tf["data"]["aws_iam_policy_document"][bucket_policy])
                  if _principals(st) & {"*", f"Service:{service}"}]
    return _decide(tf, statements, action, resource, context)


def _decide(tf, statements: list, action: str, resource: str, context: dict | None) -> Decision:
    context = context or {}
    resolve = _resolver(tf)
    matched = [(name, st) for name, st in statements if _applies(st, action, resource, context, resolve)]
    denies = [f"{n}.{s.get('sid')}" for n, s in matched if s.get("effect", "Allow") == "Deny"]
    if denies:
        return Decision("Deny", denies)
    allows = [f"{n}.{s.get('sid')}" for n, s in matched if s.get("effect", "Allow") == "Allow"]
    return Decision("Allow", allows) if allows else Decision("ImplicitDeny")


# --------------------------------------------------------------------------- S3: (role, action, key)

TLS = {"aws:SecureTransport": True, "s3:TlsVersion": "1.3"}
RUN = "runs/pets-2026-12-01"
CKPT = f"{RUN}/checkpoint_2026-12-01_10-00-00.000000"
SWEEP = "sweeps/sweep-2026-12-01"
TRIAL = f"{SWEEP}/trials/trial_003"

ALLOW, DENY = True, False
S3_CASES = [
    # Inputs: read by both, written by neither.
    ("worker", "s3:GetObject", "data/pets/train/cat/001.jpg", ALLOW),
    ("worker", "s3:GetObject", "weights/mobilenet_1_0_128_tf_no_top.h5", ALLOW),
    ("worker", "s3:PutObject", "data/pets/train/cat/001.jpg", DENY),
    ("worker", "s3:DeleteObject", "data/pets/train/cat/001.jpg", DENY),
    ("worker", "s3:PutObject", "weights/mobilenet_1_0_128_tf_no_top.h5", DENY),
    ("head", "s3:PutObject", "data/pets/train/cat/001.jpg", DENY),
    ("head", "s3:DeleteObject", "weights/mobilenet_1_0_128_tf_no_top.h5", DENY),
    # A run: workers write every file (rank 0's history.json, checkpoints, replicas) ...
    ("worker", "s3:PutObject", f"{RUN}/history.json", ALLOW),
    ("worker", "s3:PutObject", f"{RUN}/replicas/rank-1.json", ALLOW),
    ("worker", "s3:PutObject", f"{CKPT}/model.keras", ALLOW),
    ("worker", "s3:PutObject", f"{RUN}/", ALLOW),  # pyarrow's folder marker
    # ... but delete only inside checkpoint folders (Ray's pruning).
    ("worker", "s3:DeleteObject", f"{RUN}/history.json", DENY),
    ("worker", "s3:DeleteObject", f"{RUN}/evaluation.json", DENY),
    ("worker", "s3:DeleteObject", f"{RUN}/checkpoint_manager_snapshot.json", DENY),
    ("worker", "s3:DeleteObject", f"{CKPT}/model.keras", ALLOW),
    ("worker", "s3:DeleteObject", f"{CKPT}/manifest.json", ALLOW),
    ("worker", "s3:DeleteObject", f"{CKPT}/", ALLOW),
    # The head deletes anywhere under its output prefixes.
    ("head", "s3:DeleteObject", f"{RUN}/history.json", ALLOW),
    ("head", "s3:DeleteObject", f"{CKPT}/model.keras", ALLOW),
    ("head", "s3:DeleteObject", f"{SWEEP}/best.json", ALLOW),
    ("head", "s3:DeleteObject", "predictions/new/predictions/part-ab12.parquet", ALLOW),
    # A sweep: workers write trial runs only ...
    ("worker", "s3:PutObject", f"{TRIAL}/history.json", ALLOW),
    ("worker", "s3:PutObject", f"{TRIAL}/checkpoint_2026-12-01_10-00-00.000000/model.keras", ALLOW),
    ("worker", "s3:DeleteObject", f"{TRIAL}/checkpoint_2026-12-01_10-00-00.000000/model.keras", ALLOW),
    ("worker", "s3:DeleteObject", f"{TRIAL}/history.json", DENY),
    ("worker", "s3:PutObject", "sweeps/", ALLOW),  # folder markers create_dir PUTs
    ("worker", "s3:PutObject", f"{SWEEP}/", ALLOW),
    ("worker", "s3:PutObject", f"{SWEEP}/best.json", DENY),
    ("worker", "s3:PutObject", f"{SWEEP}/sweep.json", DENY),
    ("worker", "s3:DeleteObject", f"{SWEEP}/best.json", DENY),
    # ... never Ray Tune's state, which the head unpickles on --resume.
    ("worker", "s3:PutObject", f"{SWEEP}/tuner.pkl", DENY),
    ("worker", "s3:PutObject", f"{SWEEP}/experiment_state-2026-12-01_10-00-00.json", DENY),
    ("worker", "s3:PutObject", f"{SWEEP}/basic-variant-state-2026-12-01_10-00-00.json", DENY),
    ("worker", "s3:PutObject", f"{SWEEP}/searcher-state-2026-12-01_10-00-00.pkl", DENY),
    ("worker", "s3:PutObject", f"{SWEEP}/_run_trial_00003/error.pkl", DENY),
    ("worker", "s3:PutObject", f"{SWEEP}/experiment_state-2099.json/", DENY),  # a marker named like one
    ("worker", "s3:PutObject", f"{TRIAL}/tuner.pkl", DENY),  # a sweep stored inside a trial folder
    ("worker", "s3:PutObject", f"{RUN}/tuner.pkl", DENY),  # a sweep stored under runs/
    ("head", "s3:PutObject", f"{SWEEP}/tuner.pkl", ALLOW),
    ("head", "s3:PutObject", f"{SWEEP}/experiment_state-2026-12-01_10-00-00.json", ALLOW),
    # The decoded cache (imgrec.data.cache): decode tasks write and read shards under a run's or a
    # sweep's storage; the head lists, writes entry.json and removes (`imgrec cache rm`).
    ("worker", "s3:PutObject", "runs/.cache/decoded-ab12/shards/cd34.parquet", ALLOW),
    ("worker", "s3:PutObject", "sweeps/.cache/decoded-ab12/shards/cd34.parquet", ALLOW),
    ("worker", "s3:PutObject", "sweeps/.cache/decoded-ab12/shards/cd34.bad.json", ALLOW),
    ("worker", "s3:GetObject", "sweeps/.cache/decoded-ab12/shards/cd34.parquet", ALLOW),
    ("worker", "s3:PutObject", "sweeps/.cache/tuner.pkl", DENY),
    ("worker", "s3:DeleteObject", "sweeps/.cache/decoded-ab12/shards/cd34.parquet", DENY),
    ("head", "s3:DeleteObject", "sweeps/.cache/decoded-ab12/shards/cd34.parquet", ALLOW),
    ("head", "s3:PutObject", "sweeps/.cache/decoded-ab12/entry.json", ALLOW),
    # Predictions and scratch are the head's.
    ("worker", "s3:PutObject", "predictions/new/predictions/part-ab12.parquet", DENY),
    ("worker", "s3:GetObject", "predictions/new/summary.json", DENY),
    ("worker", "s3:GetObject", "scratch/tmp.bin", DENY),
    ("head", "s3:PutObject", "predictions/new/predictions/part-ab12.parquet", ALLOW),
    ("head", "s3:PutObject", "scratch/tmp.bin", ALLOW),
    # Versions stay recoverable: nobody deletes one.
    ("head", "s3:DeleteObjectVersion", f"{CKPT}/model.keras", DENY),
    ("worker", "s3:DeleteObjectVersion", f"{CKPT}/model.keras", DENY),
]


@pytest.mark.parametrize(("role", "action", "key", "allowed"), S3_CASES,
                         ids=[f"{r}-{a.split(':')[1]}-{k}" for r, a, k, _ in S3_CASES])
def test_s3_object_access(tf, role, action, key, allowed):
    decision = evaluate(tf, role, action, f"{BUCKET_ARN}/{key}", TLS)
    assert (decision.effect == "Allow") is allowed, decision


LIST_CASES = [
    ("worker", "data/pets/", ALLOW),
    ("worker", f"{TRIAL}/", ALLOW),
    ("worker", "predictions/", DENY),
    ("worker", "scratch/", DENY),
    ("worker", "", DENY),  # an empty prefix sent explicitly is a prefix outside the list
    ("head", "predictions/new/", ALLOW),
    ("head", "elsewhere/", DENY),
]


@pytest.mark.parametrize(("role", "prefix", "allowed"), LIST_CASES)
def test_listing_is_limited_to_the_roles_prefixes(tf, role, prefix, allowed):
    decision = evaluate(tf, role, "s3:ListBucket", BUCKET_ARN, {**TLS, "s3:prefix": prefix})
    assert (decision.effect == "Allow") is allowed, decision


@pytest.mark.parametrize("role", ["head", "worker"])
def test_headbucket_without_prefix_stays_allowed(tf, role):
    """HeadBucket is authorised as s3:ListBucket with no s3:prefix; pyarrow's
    create_dir needs it. IAM cannot tell it from a ListObjects call without a prefix
    (which lists every key name): a known limit, pinned so that changing it is a
    decision (infra/main.tf, "Listing")."""
    decision = evaluate(tf, role, "s3:ListBucket", BUCKET_ARN, TLS)
    assert decision.effect == "Allow" and decision.by == [f"s3_{role}.HeadBucket"], decision


# --------------------------------------------------------------------------- S3: encryption and transport

ENCRYPTION_CASES = [
    ({}, ALLOW),  # no header: the bucket default, SSE-KMS with the bucket key
    ({"s3:x-amz-server-side-encryption": "aws:kms"}, ALLOW),
    ({"s3:x-amz-server-side-encryption": "aws:kms",
      "s3:x-amz-server-side-encryption-aws-kms-key-id": KMS_KEY_ARN}, ALLOW),
    ({"s3:x-amz-server-side-encryption": "AES256"}, DENY),
    ({"s3:x-amz-server-side-encryption": "aws:kms:dsse"}, DENY),
    ({"s3:x-amz-server-side-encryption": "aws:kms",
      "s3:x-amz-server-side-encryption-aws-kms-key-id": f"arn:aws:kms:{REGION}:444455556666:key/other"}, DENY),
    ({"s3:x-amz-server-side-encryption-customer-algorithm": "AES256"}, DENY),
]


@pytest.mark.parametrize("role", ["head", "worker"])
@pytest.mark.parametrize(("headers", "allowed"), ENCRYPTION_CASES)
def test_uploads_must_use_the_bucket_kms_key(tf, role, headers, allowed):
    decision = evaluate(tf, role, "s3:PutObject", f"{BUCKET_ARN}/{RUN}/history.json", {**TLS, **headers})
    assert (decision.effect == "Allow") is allowed, decision
    if not allowed:
        assert all(d.startswith("main_bucket.") for d in decision.by), decision


@pytest.mark.parametrize(("transport", "allowed"), [
    ({"aws:SecureTransport": False, "s3:TlsVersion": "1.2"}, DENY),
    ({"aws:SecureTransport": True, "s3:TlsVersion": "1.1"}, DENY),
    ({"aws:SecureTransport": True, "s3:TlsVersion": "1.2"}, ALLOW),
])
def test_bucket_requires_tls_1_2(tf, transport, allowed):
    decision = evaluate(tf, "head", "s3:GetObject", f"{BUCKET_ARN}/data/pets/train/cat/001.jpg", transport)
    assert (decision.effect == "Allow") is allowed, decision


# S3 server access logs: the logging service delivers them over TLS (1.2+), for our bucket only.
LOG_DELIVERY = {"aws:SourceArn": BUCKET_ARN, "aws:SourceAccount": ACCOUNT}
LOG_OBJECT = f"{LOGS_BUCKET_ARN}/s3-access/imgrec-test/2026-12-01-10-00-00-0123456789ABCDEF"


@pytest.mark.parametrize(("context", "allowed"), [
    ({**TLS, **LOG_DELIVERY}, ALLOW),
    ({"aws:SecureTransport": True, "s3:TlsVersion": "1.2", **LOG_DELIVERY}, ALLOW),
    ({"aws:SecureTransport": True, "s3:TlsVersion": "1.1", **LOG_DELIVERY}, DENY),
    ({"aws:SecureTransport": False, "s3:TlsVersion": "1.2", **LOG_DELIVERY}, DENY),
    ({**TLS, **LOG_DELIVERY, "aws:SourceArn": "arn:aws:s3:::someone-elses-bucket"}, DENY),
])
def test_logs_bucket_takes_log_delivery_over_tls_1_2_only(tf, context, allowed):
    decision = evaluate_service(tf, "logging.s3.amazonaws.com", "logs_bucket", "s3:PutObject", LOG_OBJECT, context)
    assert (decision.effect == "Allow") is allowed, decision


# --------------------------------------------------------------------------- EC2: what the head may launch

LAUNCH_OK = {
    "aws:RequestTag/ray-cluster-name": "imgrec",
    "ec2:InstanceType": "g5.2xlarge",
    "ec2:InstanceProfile": WORKER_PROFILE_ARN,
    "ec2:MetadataHttpTokens": "required",
}

LAUNCH_CASES = [
    ("instance/*", LAUNCH_OK, ALLOW),
    ("instance/*", {**LAUNCH_OK, "ec2:InstanceType": "c6i.4xlarge"}, ALLOW),
    ("instance/*", {**LAUNCH_OK, "ec2:InstanceType": "p5.48xlarge"}, DENY),
    ("instance/*", {**LAUNCH_OK, "ec2:MetadataHttpTokens": "optional"}, DENY),
    ("instance/*", {**LAUNCH_OK, "aws:RequestTag/ray-cluster-name": "other"}, DENY),
    ("instance/*", {k: v for k, v in LAUNCH_OK.items() if k != "aws:RequestTag/ray-cluster-name"}, DENY),
    ("instance/*", {**LAUNCH_OK, "ec2:InstanceProfile": f"arn:aws:iam::{ACCOUNT}:instance-profile/imgrec-ray-head"},
     DENY),
    ("image/ami-0ubuntu", {"ec2:Owner": "099720109477"}, ALLOW),
    ("image/ami-0dlami", {"ec2:Owner": "amazon"}, ALLOW),
    ("image/ami-0stranger", {"ec2:Owner": "444455556666"}, DENY),
    ("subnet/subnet-0a", {"ec2:Vpc": f"{EC2}:vpc/{VPC_ID}"}, ALLOW),
    ("subnet/subnet-0b", {"ec2:Vpc": f"{EC2}:vpc/vpc-0other"}, DENY),
    ("security-group/sg-0a", {"ec2:Vpc": f"{EC2}:vpc/vpc-0other"}, DENY),
    ("volume/*", {"ec2:Encrypted": True}, ALLOW),
    ("volume/*", {"ec2:Encrypted": False}, DENY),
]


@pytest.mark.parametrize(("resource", "context", "allowed"), LAUNCH_CASES)
def test_head_launches_only_this_clusters_workers(tf, resource, context, allowed):
    arn = f"arn:aws:ec2:{REGION}::{resource}" if resource.startswith("image/") else f"{EC2}:{resource}"
    decision = evaluate(tf, "head", "ec2:RunInstances", arn, context)
    assert (decision.effect == "Allow") is allowed, decision


def test_workers_have_no_ec2_or_iam_rights(tf):
    for action in ("ec2:RunInstances", "ec2:TerminateInstances", "iam:PassRole"):
        assert evaluate(tf, "worker", action, f"{EC2}:instance/*", LAUNCH_OK).effect == "ImplicitDeny", action
