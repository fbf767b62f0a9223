"""``elmo vocab-embeddings``: the context-free ``word_emb`` of every word of a vocabulary, to HDF5."""

from __future__ import annotations

import argparse
import sys

from elmo.commands._model import add_model_args, load_model
from elmo.errors import UsageError
from elmo.vocab_embeddings import check_output, read_vocab, write_vocab_embeddings

__all__ = ["HELP", "configure", "run"]

HELP = "context-free token embeddings (word_emb) of every word of a vocabulary, to HDF5"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo vocab-embeddings``."""
    parser.add_argument("vocab", metavar="VOCAB", help="vocabulary file: one token a line")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="HDF5 file to write")
    add_model_args(parser)
    parser.add_argument("--batch-size", type=int, default=1024, help="words per batch (default: 1024)")
    parser.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    """Write the embeddings; a warning for repeated tokens and a summary on standard error."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: expected a positive integer, found {args.batch_size}")
    # Refuse a bad vocabulary or output before spending time on loading the model.
    check_output(args.output, args.overwrite)
    words = read_vocab(args.vocab)
    module = load_model(args)
    summary = write_vocab_embeddings(
        module,
        words,
        args.output,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )
    repeats = summary["duplicates"]
    if repeats:
        token, first, again = repeats[0]
        print(
            f"elmo vocab-embeddings: warning: {len(repeats)} repeated token(s), e.g. {token!r} in rows "
            f"{first} and {again} (0-based); each keeps its own row",
            file=sys.stderr,
        )
    if not args.quiet:
        print(
            f"elmo vocab-embeddings: wrote {summary['words']} embeddings of size {summary['dim']} "
            f"to {summary['output']} in {summary['seconds']:.1f} s",
            file=sys.stderr,
        )
    return 0
