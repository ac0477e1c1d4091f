"""Ray job entry point for `imgrec transfer`::

    ray job submit --working-dir . -- python jobs/transfer.py --data s3://bucket/pets --storage s3://bucket/runs

It only hands its arguments to the CLI, which parses them into the typed
config; `python jobs/transfer.py --help` lists every option.
"""

import sys

from imgrec.cli import main

if __name__ == "__main__":
    main(["transfer", *sys.argv[1:]], prog_name="jobs/transfer.py")
