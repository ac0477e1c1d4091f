"""Ray job: batch prediction over a bucket into Parquet (``imgrec.predict.predict_bucket``).

    ray job submit --working-dir . -- python jobs/predict.py \\
        --model s3://bucket/runs/my-run --input s3://bucket/photos --output s3://bucket/predictions/my-run

Only parses arguments into a ``PredictConfig`` and calls the library. Rerunning
the same command resumes: chunks already written are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `python jobs/predict.py` puts jobs/ first on sys.path, not the working dir
# Ray ships: make the repo's imgrec importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgrec.config import PredictConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> PredictConfig:
    defaults = PredictConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="run URI (its best checkpoint) or checkpoint URI")
    p.add_argument("--input", required=True, help="image prefix (class folders give labels) or a manifest")
    p.add_argument("--output", required=True, help="prefix for predictions/part-*.parquet and summary.json")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--actors", type=int, default=defaults.actors, help="model actors (one model load each)")
    p.add_argument("--cpus", type=float, default=defaults.num_cpus, help="CPUs per model actor")
    p.add_argument("--gpus", type=float, default=defaults.num_gpus, help="GPUs per model actor")
    p.add_argument("--top-k", type=int, default=defaults.top_k)
    p.add_argument("--files-per-output", type=int, default=defaults.files_per_output)
    p.add_argument("--no-resume", dest="resume", action="store_false", help="replace earlier parts")
    p.add_argument("--all-files", action="store_true", help="predict every file, not only image endings")
    a = p.parse_args(argv)
    return PredictConfig(model=a.model, input=a.input, output=a.output, batch_size=a.batch_size,
                         actors=a.actors, num_cpus=a.cpus, num_gpus=a.gpus, top_k=a.top_k,
                         files_per_output=a.files_per_output, resume=a.resume, all_files=a.all_files)


def main(argv: list[str] | None = None) -> None:
    from imgrec.predict import predict_bucket
    from imgrec.runtime import ensure_ray

    cfg = parse_args(argv)
    ensure_ray()  # the job's cluster (RAY_ADDRESS), or a local one
    predict_bucket(cfg)


if __name__ == "__main__":
    main()
