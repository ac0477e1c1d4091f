"""Ray job entry point for `imgrec export` (no Ray needed, but a cluster's head has the checkpoints' S3 access)::

    ray job submit --working-dir . -- python jobs/export.py s3://bucket/runs/my-run --format onnx \\
        --out s3://bucket/exports/my-run-onnx

It only hands its arguments to the CLI; `python jobs/export.py --help` lists every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgrec.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["export", *sys.argv[1:]], prog_name="jobs/export.py")
