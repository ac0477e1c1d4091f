"""Static checks of the deployment files: cluster/ (Ray launcher, KubeRay, local
scripts) and infra/ (Terraform). Nothing is started or deployed; the whole
module runs in a few seconds.

What is pinned here is what would hurt if it silently changed: the head/CPU/GPU
node groups and their IAM profiles, IMDSv2 and token auth on the AWS cluster, the
bucket's protections (versioning, encryption, public access block, TLS only),
lifecycle rules that must never expire live checkpoints under runs/ or sweeps/,
and the shape of the head and worker S3 policies. What those policies allow,
case by case, is evaluated in tests/test_iam_policy.py.

The Terraform checks need python-hcl2 (dev extra) and skip without it;
`terraform fmt` is checked when the terraform binary is on PATH.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
INFRA = REPO / "infra"

# The bucket layout (see infra/main.tf and README): top-level prefixes each role
# may read and write (the worker's writes are narrower inside runs/ and sweeps/:
# tests/test_iam_policy.py).
READ_ONLY = {"data", "weights"}
READ_WRITE = {"runs", "sweeps", "predictions", "scratch"}
WORKER_READ = {"data", "weights", "runs", "sweeps"}
WORKER_WRITE = {"runs", "sweeps"}
NEVER_EXPIRE = ("runs/", "sweeps/")  # best.json points at live checkpoints there
WRITE_ACTIONS = {"s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:AbortMultipartUpload"}


# --------------------------------------------------------------------------- helpers


def _aws_config() -> dict:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


def _kuberay_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text()) if d]


def _ray_cluster() -> dict:
    (rc,) = [d for d in _kuberay_docs() if d["kind"] == "RayCluster"]
    return rc


def _ray_minor_from_pyproject() -> str:
    """'2.60' from the ray requirement in pyproject.toml."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_dep,) = [d for d in deps if re.match(r"ray\b", d)]
    return re.search(r">=\s*(\d+\.\d+)", ray_dep).group(1)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _unquote(value):
    """python-hcl2 < 8 leaves no quotes; >= 8 may keep them on keys and strings."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _plain(node):
    """Normalise python-hcl2 output across versions: no quotes, no markers."""
    if isinstance(node, dict):
        return {_unquote(k): _plain(v) for k, v in node.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return _unquote(node)


@pytest.fixture(scope="module")
def tf() -> dict:
    return load_terraform()


def load_terraform() -> dict:
    """All infra/*.tf merged: {'resource': {type: {name: body}}, 'data': ..., 'variable': {name: body},
    'locals': {name: value}}, with every aws_iam_policy_document as Terraform exports it (see
    _effective_policy_documents)."""
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 not installed (dev extra)")
    options = {}
    if hasattr(hcl2, "SerializationOptions"):  # python-hcl2 >= 7
        options["serialization_options"] = hcl2.SerializationOptions(
            with_comments=False, explicit_blocks=False, strip_string_quotes=True
        )
    merged: dict = {"resource": {}, "data": {}, "variable": {}, "output": {}, "locals": {}}
    for path in sorted(INFRA.glob("*.tf")):
        with path.open() as fh:
            doc = _plain(hcl2.load(fh, **options))
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    merged[kind].setdefault(rtype, {}).update(named)
        for kind in ("variable", "output", "locals"):
            for block in doc.get(kind, []):
                merged[kind].update(block)
    _effective_policy_documents(merged)
    return merged


# The two expressions infra/main.tf builds policy lists with from a local list of prefixes
# (python-hcl2 gives each as one interpolation string); nothing more general is evaluated.
_PREFIX_AND_BELOW = re.compile(  # flatten([for p in local.X : [p, "${p}/*"]]) -> [a, a/*, b, b/*, ...]
    r'\$\{flatten\(\[for (\w+) in local\.(\w+) : \[\1, "\$\{\1\}/\*"\]\]\)\}')
_UNDER_BUCKET = re.compile(  # formatlist("${aws_s3_bucket.B.arn}/%s", local.X) -> [<arn>/a, <arn>/b, ...]
    r'\$\{formatlist\("(\$\{aws_s3_bucket\.\w+\.arn\})/%s", local\.(\w+)\)\}')
_DOC_JSON = re.compile(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}")
_PLAIN_REFS = re.compile(r"\$\{[\w.]+\}")  # ${aws_s3_bucket.main.arn}, ${var.region}: filled in by the tests


def _effective_policy_documents(tf: dict) -> None:
    """Rewrite tf's aws_iam_policy_document bodies into what Terraform exports: statements of
    source_policy_documents first, then the document's own; the expressions above expanded.
    Anything else that needs evaluating (another function or expression, override documents,
    a reused sid) raises, so that no edit can make a test read a policy it did not understand."""
    docs = tf["data"].get("aws_iam_policy_document", {})

    def prefixes(name: str) -> list[str]:
        value = tf["locals"][name]
        assert isinstance(value, list) and all(isinstance(v, str) and "${" not in v for v in value), name
        return value

    def expand(value, where: str):
        if isinstance(value, list):
            return [expand(v, where) for v in value]
        if isinstance(value, dict):
            return {k: expand(v, where) for k, v in value.items()}
        if not isinstance(value, str):
            return value
        if m := _PREFIX_AND_BELOW.fullmatch(value):
            return [v for p in prefixes(m.group(2)) for v in (p, f"{p}/*")]
        if m := _UNDER_BUCKET.fullmatch(value):
            return [f"{m.group(1)}/{p}" for p in prefixes(m.group(2))]
        not_strings = [n for n in re.findall(r"\$\{local\.(\w+)\}", value) if not isinstance(tf["locals"].get(n), str)]
        if not_strings or "${" in _PLAIN_REFS.sub("", value):  # a list local, a function, an expression
            raise ValueError(f"{where}: cannot evaluate {value!r} (tests/test_cluster_infra.py)")
        return value

    def effective(name: str) -> list[dict]:
        doc = docs[name]
        unmodelled = {"override_policy_documents", "source_json", "override_json"} & set(doc)
        assert not unmodelled, f"{name}: {unmodelled} not modelled"
        statements = []
        for ref in _as_list(doc.get("source_policy_documents", [])):
            m = _DOC_JSON.fullmatch(ref)
            assert m, f"{name}: source_policy_documents entry {ref!r} not modelled"
            statements += effective(m.group(1))
        statements += [expand(st, f"{name} {st.get('sid')}") for st in _statements(doc)]
        sids = [st["sid"] for st in statements if st.get("sid")]
        assert len(sids) == len(set(sids)), f"{name}: a sid repeats (overrides are not modelled): {sids}"
        return statements

    resolved = {name: effective(name) for name in docs}
    for name, statements in resolved.items():
        body = {k: v for k, v in docs[name].items() if k not in ("statement", "source_policy_documents")}
        docs[name] = {**body, "statement": statements}


def _block(value) -> dict:
    """A nested block: python-hcl2 gives a one-element list (or a dict)."""
    if isinstance(value, list):
        assert len(value) == 1, value
        return value[0]
    return value


def _default(tf: dict, name: str):
    return tf["variable"][name]["default"]


def _resources_for(tf: dict, rtype: str, bucket_ref: str) -> list[dict]:
    return [body for body in tf["resource"].get(rtype, {}).values() if body.get("bucket") == bucket_ref]


def _statements(doc: dict) -> list[dict]:
    return _as_list(doc.get("statement", []))


# --------------------------------------------------------------------------- cluster/aws.yaml


def test_aws_launcher_config_has_head_cpu_and_gpu_groups():
    cfg = _aws_config()
    assert cfg["cluster_name"]
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    nodes = cfg["available_node_types"]
    head = nodes[cfg["head_node_type"]]
    # The head runs only the job server, drivers and autoscaler: no CPUs for tasks.
    assert head["resources"].get("CPU") == 0

    workers = {name: n for name, n in nodes.items() if name != cfg["head_node_type"]}
    gpu = [n for n in workers.values() if re.match(r"(g5|g6|g6e|p4|p5)\.", n["node_config"]["InstanceType"])]
    cpu = [n for n in workers.values() if re.match(r"(m|c|r)\d", n["node_config"]["InstanceType"])]
    assert gpu and cpu, f"need a CPU and a GPU worker group, got {list(workers)}"
    for group in workers.values():
        assert group["min_workers"] == 0, "worker groups scale from zero"
        assert group["max_workers"] >= 1
        assert "resources" in group
    assert sum(n["max_workers"] for n in workers.values()) <= cfg["max_workers"]
    assert 0 < cfg["idle_timeout_minutes"] <= 60

    for name, node in nodes.items():
        profile = node["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), f"{name}: no IamInstanceProfile (S3 access)"
    # Workers must not get the head's profile (it can launch and terminate instances).
    head_profile = head["node_config"]["IamInstanceProfile"]
    assert all(n["node_config"]["IamInstanceProfile"] != head_profile for n in workers.values())


def test_aws_nodes_require_imdsv2_and_ray_token_auth():
    cfg = _aws_config()
    for name, node in cfg["available_node_types"].items():
        md = node["node_config"].get("MetadataOptions", {})
        assert md.get("HttpTokens") == "required", f"{name}: IMDSv2 not required"
        assert md.get("HttpEndpoint", "enabled") == "enabled" and md.get("HttpPutResponseHopLimit", 1) == 1, name
    # Every node starts Ray in token mode and has the token at Ray's default path.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in cfg[key] if "ray start" in c]
        assert re.search(r"\bRAY_AUTH_MODE=token\b[^\n]*ray start", start), f"{key}: {start}"
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c for c in cfg["setup_commands"]), "ray CLI on the nodes"


def test_aws_setup_installs_imgrec_with_gpu_extra_on_gpu_nodes():
    cfg = _aws_config()
    commands = "\n".join(cfg["setup_commands"] + cfg.get("worker_setup_commands", []))
    assert re.search(r"pip install [^\n]*imgrec\[gpu\]", commands), commands
    assert re.search(r"pip install [^\n]*imgrec\"", commands), "CPU nodes install plain imgrec"
    # The source is shipped by file_mounts, the venv and outputs are not.
    assert "." in cfg["file_mounts"].values()
    assert ".venv" in cfg["rsync_exclude"]


def test_aws_config_passes_rays_own_schema():
    """Ray's launcher validation, offline: defaults merged, JSON schema, node-type checks."""
    pytest.importorskip("jsonschema")
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = util.prepare_config(copy.deepcopy(_aws_config()))
    util.validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


# --------------------------------------------------------------------------- cluster/kuberay.yaml


def test_kuberay_manifest_groups_resources_and_gpu():
    rc = _ray_cluster()
    assert rc["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    assert spec["rayVersion"].startswith(_ray_minor_from_pyproject() + "."), "image Ray must match pyproject"
    assert spec["enableInTreeAutoscaling"] is True

    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (head_container,) = head["template"]["spec"]["containers"]
    assert 8265 in [p["containerPort"] for p in head_container["ports"]], "job server port"

    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    for g in groups.values():
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in str(groups["cpu"]["template"])

    for template in [head["template"]] + [g["template"] for g in groups.values()]:
        for c in template["spec"]["containers"]:
            assert {"requests", "limits"} <= set(c["resources"]), c["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_kuberay_s3_credentials_via_irsa_or_secret():
    docs = _kuberay_docs()
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    roles = {name: sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] for name, sa in accounts.items()}
    assert all(arn.startswith("arn:aws:iam::") for arn in roles.values())
    spec = _ray_cluster()["spec"]
    head_sa = spec["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
    worker_sas = {g["template"]["spec"]["serviceAccountName"] for g in spec["workerGroupSpecs"]}
    # Head and workers assume different roles (head: drivers and Tune; workers: narrower).
    assert len(accounts) == 2 and head_sa in accounts and worker_sas == set(accounts) - {head_sa}
    assert roles[head_sa] != roles[next(iter(worker_sas))]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        assert template["spec"]["serviceAccountName"] in accounts
        for c in template["spec"]["containers"]:
            refs = [e["secretRef"] for e in c.get("envFrom", []) if "secretRef" in e]
            # Optional: with IRSA there is no Secret and the pods must still start.
            assert refs and all(r.get("optional") is True for r in refs), c["name"]
    # Only the cluster's own pods may reach the (unauthenticated) job server.
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == {"ray.io/cluster": _ray_cluster()["metadata"]["name"]}


def test_dockerfile_ray_matches_pyproject():
    text = (CLUSTER / "Dockerfile").read_text()
    tag = re.search(r"^FROM rayproject/ray:(\S+)", text, re.M).group(1)
    assert tag.startswith(_ray_minor_from_pyproject() + "."), tag


# --------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", ["cluster/local.sh", "infra/local/s3.sh"])
def test_scripts_parse_and_are_executable(script):
    path = REPO / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(path)], check=True, timeout=60)


def test_checkov_skips_carry_a_reason():
    files = [*INFRA.rglob("*.tf"), *CLUSTER.iterdir()]
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            m = re.search(r"checkov:skip=([A-Z0-9_]+)(:?)(.*)", line)
            if m:
                assert m.group(2) == ":" and len(m.group(3).strip()) >= 20, f"{path.name}: {line.strip()}"


# --------------------------------------------------------------------------- infra/ (Terraform)


def test_terraform_fmt():
    if not shutil.which("terraform"):
        pytest.skip("terraform not installed")
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", str(INFRA)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"terraform fmt would change: {result.stdout}"


def test_cluster_configs_match_terraform_names(tf):
    cfg = _aws_config()
    assert cfg["cluster_name"] == _default(tf, "ray_cluster_name"), "head role's tag condition"
    assert cfg["provider"]["region"] == _default(tf, "region")
    prefix = _default(tf, "name_prefix")
    nodes = cfg["available_node_types"]
    assert nodes[cfg["head_node_type"]]["node_config"]["IamInstanceProfile"]["Name"] == f"{prefix}-ray-head"
    for name, node in nodes.items():
        if name != cfg["head_node_type"]:
            assert node["node_config"]["IamInstanceProfile"]["Name"] == f"{prefix}-ray-cluster"
    profiles = {p["name"] for p in tf["resource"]["aws_iam_instance_profile"].values()}
    assert profiles == {"${var.name_prefix}-ray-head", "${var.name_prefix}-ray-cluster"}
    # The head role may launch exactly the worker node types' instance types.
    worker_types = {n["node_config"]["InstanceType"] for name, n in nodes.items() if name != cfg["head_node_type"]}
    assert worker_types <= set(_default(tf, "worker_instance_types"))
    assert nodes[cfg["head_node_type"]]["node_config"]["InstanceType"] not in _default(tf, "worker_instance_types")
    # KubeRay: the head pod and the worker pods run as the two IRSA ServiceAccounts.
    spec = _ray_cluster()["spec"]
    head_sa = spec["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
    worker_sas = {g["template"]["spec"]["serviceAccountName"] for g in spec["workerGroupSpecs"]}
    assert head_sa == _default(tf, "k8s_head_service_account")
    assert worker_sas == {_default(tf, "k8s_service_account")}
    for sa in [d["metadata"] for d in _kuberay_docs() if d["kind"] == "ServiceAccount"]:
        assert sa["namespace"] == _default(tf, "k8s_namespace")


def test_every_bucket_is_versioned_private_and_encrypted(tf):
    buckets = tf["resource"]["aws_s3_bucket"]
    assert {"main", "logs"} <= set(buckets)
    for name in buckets:
        ref = f"${{aws_s3_bucket.{name}.id}}"
        (versioning,) = _resources_for(tf, "aws_s3_bucket_versioning", ref)
        assert _block(versioning["versioning_configuration"])["status"] == "Enabled"

        (pab,) = _resources_for(tf, "aws_s3_bucket_public_access_block", ref)
        for flag in (
            "block_public_acls",
            "block_public_policy",
            "ignore_public_acls",
            "restrict_public_buckets",
        ):
            assert pab[flag] is True, f"{name}: {flag}"

        (own,) = _resources_for(tf, "aws_s3_bucket_ownership_controls", ref)
        assert _block(own["rule"])["object_ownership"] == "BucketOwnerEnforced"

        (sse,) = _resources_for(tf, "aws_s3_bucket_server_side_encryption_configuration", ref)
        assert _block(_block(sse["rule"])["apply_server_side_encryption_by_default"])["sse_algorithm"]

    (sse,) = _resources_for(
        tf, "aws_s3_bucket_server_side_encryption_configuration", "${aws_s3_bucket.main.id}"
    )
    rule = _block(sse["rule"])
    assert _block(rule["apply_server_side_encryption_by_default"])["sse_algorithm"] == "aws:kms"
    assert rule["bucket_key_enabled"] is True
    assert all(k["enable_key_rotation"] is True for k in tf["resource"]["aws_kms_key"].values())

    (logging,) = _resources_for(tf, "aws_s3_bucket_logging", "${aws_s3_bucket.main.id}")
    assert logging["target_bucket"] == "${aws_s3_bucket.logs.id}"


def test_bucket_policies_deny_plain_http(tf):
    docs = tf["data"]["aws_iam_policy_document"]
    for policy in tf["resource"]["aws_s3_bucket_policy"].values():
        ref = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", policy["policy"])
        doc_name = ref.group(1)
        denies = [
            s
            for s in _statements(docs[doc_name])
            if s.get("effect") == "Deny"
            and any(
                c["test"] == "Bool"
                and c["variable"] == "aws:SecureTransport"
                and _as_list(c["values"]) == ["false"]
                for c in _as_list(s.get("condition", []))
            )
        ]
        assert denies, f"{doc_name}: no TLS-only Deny statement"
        assert "s3:*" in denies[0]["actions"]


def test_lifecycle_never_expires_current_checkpoints(tf):
    (lc,) = _resources_for(tf, "aws_s3_bucket_lifecycle_configuration", "${aws_s3_bucket.main.id}")
    rules = _as_list(lc["rule"])
    by_prefix = {}
    for rule in rules:
        assert rule["status"] == "Enabled"
        assert "abort_incomplete_multipart_upload" in rule, rule["id"]
        prefix = _block(rule["filter"]).get("prefix", "") if "filter" in rule else ""
        by_prefix[prefix] = rule
        expiration = _block(rule["expiration"]) if "expiration" in rule else {}
        expires_current = "days" in expiration or "date" in expiration
        covers_checkpoints = (
            prefix == "" or prefix.startswith(NEVER_EXPIRE) or any(p.startswith(prefix) for p in NEVER_EXPIRE)
        )
        assert not (expires_current and covers_checkpoints), (
            f"rule {rule['id']} expires live objects under runs/ or sweeps/"
        )

    # History is purged bucket-wide after the undo window; scratch/ expires outright.
    assert "noncurrent_version_expiration" in by_prefix[""]
    assert int(_default(tf, "noncurrent_version_days")) >= 7
    assert "days" in _block(by_prefix["scratch/"]["expiration"])
    assert 1 <= int(_default(tf, "scratch_expiry_days")) <= 30


def _s3_prefix(resource: str) -> str | None:
    """'data' from '${aws_s3_bucket.main.arn}/data/*' (or '.../data', '.../sweeps/*/trials/*',
    '.../*.pkl*'); None for the bucket itself, '*' for a pattern over the whole bucket."""
    m = re.fullmatch(r"\$\{aws_s3_bucket\.main\.arn\}(?:/(\*|[^/*]+)[^{}]*)?", resource)
    assert m, f"unexpected S3 resource {resource!r}"
    return m.group(1)


@pytest.mark.parametrize(("doc_name", "readable_expected", "writable_expected"), [
    ("s3_head", READ_ONLY | READ_WRITE, READ_WRITE),
    ("s3_worker", WORKER_READ, WORKER_WRITE),
])
def test_cluster_s3_policies_are_least_privilege(tf, doc_name, readable_expected, writable_expected):
    doc = tf["data"]["aws_iam_policy_document"][doc_name]
    readable, writable, listable = set(), set(), set()
    for st in _statements(doc):
        actions = set(st["actions"])
        resources = _as_list(st["resources"])
        if st.get("effect", "Allow") == "Deny":
            continue  # Denies only narrow (tests/test_iam_policy.py shows what they refuse)
        assert "*" not in resources and not any(a in ("*", "s3:*") or a.endswith(":*") for a in actions)
        s3_actions = {a for a in actions if a.startswith("s3:")}
        if not s3_actions:
            assert actions <= {"kms:Decrypt", "kms:GenerateDataKey"}
            assert resources == ["${aws_kms_key.bucket.arn}"]
            continue
        prefixes = {_s3_prefix(r) for r in resources}
        if s3_actions == {"s3:ListBucket"}:
            assert prefixes == {None}
            (cond,) = _as_list(st["condition"])
            assert cond["variable"] == "s3:prefix"
            if cond["test"] == "Null":  # HeadBucket: no prefix at all (see infra/main.tf, "Listing")
                assert _as_list(cond["values"]) == ["true"]
            else:
                assert cond["test"] == "StringLike", "IfExists would also admit a listing without a prefix"
                listable |= {v.split("/")[0] for v in cond["values"]}
            continue
        assert None not in prefixes and "*" not in prefixes, "object actions on the bucket ARN or the whole bucket"
        if "s3:GetObject" in s3_actions:
            readable |= prefixes
        if s3_actions & WRITE_ACTIONS:
            writable |= prefixes
        assert "s3:DeleteObjectVersion" not in s3_actions, "versions must stay recoverable"
    assert readable == readable_expected
    assert listable == readable_expected, "list exactly what the role may read"
    assert writable == writable_expected


def test_each_role_gets_its_own_s3_policy(tf):
    attached = {(a["role"], a["policy_arn"]) for a in tf["resource"]["aws_iam_role_policy_attachment"].values()}
    assert {(role, arn) for role, arn in attached if ".s3_" in arn} == {
        ("${aws_iam_role.head.name}", "${aws_iam_policy.s3_head.arn}"),
        ("${aws_iam_role.cluster.name}", "${aws_iam_policy.s3_worker.arn}"),
        ("${aws_iam_role.irsa[0].name}", "${aws_iam_policy.s3_worker.arn}"),
        ("${aws_iam_role.irsa_head[0].name}", "${aws_iam_policy.s3_head.arn}"),
    }
    # Only the EC2 head may launch and terminate nodes.
    assert {role for role, arn in attached if arn == "${aws_iam_policy.autoscaler.arn}"} == {"${aws_iam_role.head.name}"}


def test_no_policy_allows_s3_wildcards(tf):
    for name, doc in tf["data"]["aws_iam_policy_document"].items():
        for st in _statements(doc):
            if st.get("effect", "Allow") != "Allow":
                continue
            actions = _as_list(st.get("actions", []))
            assert "s3:*" not in actions and "*" not in actions, name
            if any(a.startswith("s3:") for a in actions):
                assert "*" not in _as_list(st.get("resources", [])), name


def test_head_may_only_pass_the_worker_role(tf):
    doc = tf["data"]["aws_iam_policy_document"]["autoscaler"]
    (pass_role,) = [s for s in _statements(doc) if "iam:PassRole" in s["actions"]]
    assert _as_list(pass_role["resources"]) == ["${aws_iam_role.cluster.arn}"]
    terminate = [s for s in _statements(doc) if "ec2:TerminateInstances" in s["actions"]]
    for st in terminate:
        (cond,) = _as_list(st["condition"])
        assert cond["variable"] == "aws:ResourceTag/ray-cluster-name"
