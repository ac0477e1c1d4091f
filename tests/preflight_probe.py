"""Runs bad invocations in a fresh process for ``tests/test_preflight.py`` and
prints, per case, as JSON: exit code, output, which heavy modules were loaded,
and every file or S3 object that appeared.

Input (stdin, JSON): ``{"watch": [local dirs and s3:// prefixes], "cases": {name:
case}}``; a case is ``{"cli": [args]}`` (``imgrec.cli.app`` through typer's
runner) or ``{"call": "train" | "sweep" | "predict", "config": {...}}`` (the
library entry point on ``from_dict`` of its config), with optional ``"env"``
changes (a value of null removes the variable). An import of Ray or TensorFlow
fails at once instead of starting a cluster, so a check that slips shows as an
error, not as minutes of training."""

from __future__ import annotations

import json
import os
import sys
import traceback

HEAVY = ("ray", "tensorflow", "keras")


class RefuseHeavyImports:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{name} imported before the pre-flight refused the config")
        return None


sys.meta_path.insert(0, RefuseHeavyImports())

from typer.testing import CliRunner  # noqa: E402

from imgrec import storage  # noqa: E402
from imgrec.cli import app  # noqa: E402
from imgrec.config import ConfigError, PredictConfig, SweepConfig, TrainConfig, from_dict  # noqa: E402
from imgrec.predict import predict_bucket  # noqa: E402
from imgrec.train import train  # noqa: E402
from imgrec.tune import sweep  # noqa: E402

CALLS = {"train": (train, TrainConfig), "sweep": (sweep, SweepConfig), "predict": (predict_bucket, PredictConfig)}


def snapshot(roots: list[str]) -> set[str]:
    found = set()
    for root in roots:
        if storage.is_s3(root):
            found |= {o.uri for o in storage.list_objects(root)}
        else:
            found |= {os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files}
    return found


def run_cli(args: list[str]) -> dict:
    result = CliRunner().invoke(app, args)
    crash = result.exception if not isinstance(result.exception, SystemExit | type(None)) else None
    return {"exit_code": result.exit_code, "output": result.output,
            "crash": "".join(traceback.format_exception(crash)) if crash else None}


def run_call(name: str, config: dict) -> dict:
    fn, cls = CALLS[name]
    try:
        fn(from_dict(cls, config))
    except ConfigError as exc:
        return {"error": type(exc).__name__, "field": exc.field, "message": str(exc)}
    except Exception as exc:
        return {"error": type(exc).__name__, "field": None, "message": str(exc), "crash": traceback.format_exc()}
    return {"error": None}


def run(case: dict) -> dict:
    saved = {k: os.environ.get(k) for k in case.get("env", {})}
    for key, value in case.get("env", {}).items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    try:
        return run_cli(case["cli"]) if "cli" in case else run_call(case["call"], case["config"])
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def main() -> None:
    spec = json.load(sys.stdin)
    outcomes = {}
    for name, case in spec["cases"].items():
        before = snapshot(spec["watch"])
        outcome = run(case)
        outcome["written"] = sorted(snapshot(spec["watch"]) - before)
        outcome["heavy"] = sorted(m for m in HEAVY if m in sys.modules)
        outcomes[name] = outcome
    json.dump(outcomes, sys.stdout)


if __name__ == "__main__":
    main()
