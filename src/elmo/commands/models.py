"""``elmo models``: the released models known by name, and which are in the cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from elmo.download import OPTIONS_FILE, WEIGHTS_FILE, default_cache_dir, known_models

__all__ = ["HELP", "configure", "run"]

HELP = "list the released models known by name"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo models``."""
    parser.add_argument("--cache-dir", help="where models are kept (default: $ELMO_CACHE or ~/.cache/elmo)")


def run(args: argparse.Namespace) -> int:
    """One line per model on standard output; the cache directory on standard error."""
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    models = known_models()
    width = max(len(n) for n in models)
    for name, model in models.items():
        here = (cache / name / OPTIONS_FILE).is_file() and (cache / name / WEIGHTS_FILE).is_file()
        print(f"{name:{width}s}  {'cached    ' if here else 'not cached'}  {model.description}")
    print(f"cache: {cache} (ELMO_CACHE changes it)", file=sys.stderr)
    return 0
