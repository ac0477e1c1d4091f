"""The embedded default (``make demo``): synthetic data, MobileNet pretraining
on task A, then the transfer job fine-tuning on task B, evaluation and report,
all offline on a local Ray cluster with local storage. Options: --help."""

import argparse

from imgrec.demo import run_demo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo-output", help="Where data, weights and runs go (local or s3://).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--transfer-epochs", type=int, default=4)
    args = parser.parse_args()
    run_demo(args.out, workers=args.workers, pretrain_epochs=args.pretrain_epochs,
             transfer_epochs=args.transfer_epochs)
