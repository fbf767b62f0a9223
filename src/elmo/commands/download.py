"""``elmo download NAME...``: released models into the cache, their directories on standard output."""

from __future__ import annotations

import argparse

from elmo.download import download_model, released_model

__all__ = ["HELP", "configure", "run"]

HELP = "download released models by name into the cache"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo download``."""
    parser.add_argument("names", nargs="+", metavar="NAME", help="released model name (see `elmo models`)")
    parser.add_argument("--cache-dir", help="where models are kept (default: $ELMO_CACHE or ~/.cache/elmo)")
    parser.add_argument("--force", action="store_true", help="download again even if cached")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    """Download each model (every name is checked before the first download)."""
    for name in args.names:
        released_model(name)
    for name in args.names:
        progress = False if args.quiet else None
        print(download_model(name, args.cache_dir, force=args.force, progress=progress))
    return 0
