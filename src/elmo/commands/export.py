"""``elmo export``: a training run as a released-layout model (options.json, weights.hdf5, LM head)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["HELP", "configure", "run"]

HELP = "write a trained model as options.json + weights.hdf5 (+ its LM head)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo export``."""
    parser.add_argument(
        "source", metavar="RUN_DIR", help="run directory, checkpoint.pt or bilm-tf checkpoint dir"
    )
    parser.add_argument("-o", "--output", required=True, metavar="DIR")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it is an earlier export (never other files)"
    )


def run(args: argparse.Namespace) -> int:
    """Write the model; its files named on standard error."""
    from elmo.train.models import export_model

    out = export_model(args.source, args.output, overwrite=args.overwrite)
    print(f"elmo export: wrote {out}/options.json, weights.hdf5, lm_head.hdf5", file=sys.stderr)
    return 0
