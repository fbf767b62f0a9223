"""``elmo embed-corpus``: embed many text files on Ray, into resumable shards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from elmo.choices import FILE_LAYERS
from elmo.commands._model import add_engine_args, add_model_args
from elmo.corpus import FORMATS, CorpusJob
from elmo.errors import UsageError

__all__ = ["HELP", "INTERRUPTED", "configure", "run"]

HELP = "embed many text files on a Ray cluster (or this machine's cores) into shards"
INTERRUPTED = "the finished shards are kept; rerun with --resume to continue"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo embed-corpus``."""
    parser.description = (
        "Embed the files INPUT patterns match (one whitespace-tokenized sentence a line; quote "
        "patterns such as 'corpus/**/*.txt') into OUT_DIR: Parquet shards named by input file and "
        "line range, or with --format hdf5 one file per input in the layout of `elmo embed`, plus "
        "manifest.json. Read them with elmo.read_embeddings(OUT_DIR), pyarrow, pandas or Ray Data. "
        'Needs pip install "elmo-embeddings[ray]".'
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="file or glob pattern (** for subfolders)")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    add_model_args(parser)
    add_engine_args(parser)
    r = parser.add_argument_group("Ray")
    r.add_argument(
        "--ray",
        metavar="auto|ADDRESS",
        default=None,
        help="the Ray cluster: auto (the one started on this machine with `ray start`) or its "
        "address host:port (default: a new Ray on this machine's cores)",
    )
    r.add_argument("--workers", type=int, default=None, help="model actors (default: as many as fit)")
    r.add_argument("--threads", type=int, default=1, help="CPUs (torch threads) per worker (default: 1)")
    r.add_argument("--gpus", type=float, default=0, help="GPUs per worker, e.g. 1 or 0.5 (default: 0)")
    parser.add_argument("--layers", choices=FILE_LAYERS, default="all", help="as elmo embed (default: all)")
    parser.add_argument(
        "--store-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="stored arrays (default: float32)",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="parquet", help="output files (default: parquet)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default: 64)")
    parser.add_argument(
        "--shard-lines",
        type=int,
        default=2048,
        help="lines per shard, rounded up to whole windows of 16 batches (default: 2048)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue a run in OUT_DIR, skipping finished shards"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    """Embed the corpus; a summary line on standard error unless ``--quiet``."""
    from elmo.ray import embed_corpus

    for flag in ("batch_size", "shard_lines", "threads"):
        if getattr(args, flag) < 1:
            raise UsageError(
                f"--{flag.replace('_', '-')}: expected a positive integer, found {getattr(args, flag)}"
            )
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: expected a positive integer, found {args.workers}")
    if args.model and (args.options or args.weights):
        raise UsageError("give either --model or --options with --weights, not both")
    if bool(args.options) != bool(args.weights):
        raise UsageError("--options and --weights go together")
    model = (args.options, args.weights) if args.options else (args.model or "default")
    if args.engine == "plain" and args.precision != "float32":
        raise UsageError(f"--precision {args.precision} needs the fast engine, not --engine plain")
    job = CorpusJob(
        patterns=args.inputs,
        out_dir=Path(args.out_dir),
        layers=args.layers,
        store_dtype=args.store_dtype,
        format=args.format,
        batch_size=args.batch_size,
        shard_lines=args.shard_lines,
        resume=args.resume,
    )

    def log(message: str) -> None:
        if not args.quiet:
            print(f"elmo embed-corpus: {message}", file=sys.stderr, flush=True)

    summary = embed_corpus(
        job,
        model,
        engine=args.engine,
        precision=args.precision,
        cache_size=args.cache_size,
        device=args.device,
        address=args.ray,
        workers=args.workers,
        threads=args.threads,
        gpus=args.gpus,
        log=log,
    )
    log(
        f"{summary['shards']} shards ({len(summary['computed'])} computed, {summary['skipped']} already "
        f"complete), {summary['lines']} sentences, {summary['tokens']} tokens in {summary['seconds']:.1f} s "
        f"to {summary['output']}"
    )
    return 0
