"""Ray job entry point for `imgrec tune` (a hyperparameter sweep)::

    ray job submit --working-dir . -- python jobs/sweep.py --data s3://bucket/pets \
        --storage s3://bucket/sweeps --name pets-sweep --samples 8 --epochs 5 --freeze-depths 0,20,40

If the job's driver dies, submit it again with `--resume` (same --storage and
--name): finished trials are kept, unfinished ones continue.

It only hands its arguments to the CLI, which parses them into a SweepConfig
and calls `imgrec.tune.sweep`; `python jobs/sweep.py --help` lists every option.
"""

import sys

from imgrec.cli import main

if __name__ == "__main__":
    main(["tune", *sys.argv[1:]], prog_name="jobs/sweep.py")
