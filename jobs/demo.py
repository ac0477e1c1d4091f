"""The embedded default (``make demo``): synthetic data, MobileNet pretraining
on task A, then the transfer job fine-tuning on task B, evaluation and report,
all offline on a local Ray cluster with local storage.

It only hands its arguments to the CLI (``imgrec demo``); ``python jobs/demo.py --help`` lists them.
"""

import sys

from imgrec.cli import main

if __name__ == "__main__":
    main(["demo", *sys.argv[1:]], prog_name="jobs/demo.py")
