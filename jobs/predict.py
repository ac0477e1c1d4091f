"""Ray job entry point for `imgrec predict`: batch prediction over a bucket into Parquet::

    ray job submit --working-dir . -- python jobs/predict.py \\
        --model s3://bucket/runs/my-run --input s3://bucket/photos --output s3://bucket/predictions/my-run

It only hands its arguments to the CLI, which parses them into the typed config
(`python jobs/predict.py --help` lists every option). Rerunning the same command
resumes: chunks already written are skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python jobs/predict.py` puts jobs/ first on sys.path, not the working dir
# Ray ships: make the repo's imgrec importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgrec.cli import main  # noqa: E402
from imgrec.cli_predict import predict_config  # noqa: E402
from imgrec.config import PredictConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> PredictConfig:
    """The config this job would run (the CLI's parsing, without running it)."""
    return predict_config(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main(["predict", *sys.argv[1:]], prog_name="jobs/predict.py")
