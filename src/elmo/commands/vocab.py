"""``elmo vocab``: a bilm-tf vocabulary file from tokenized text, with a summary of its coverage."""

from __future__ import annotations

import argparse
import sys

from elmo.atomic import check_destination
from elmo.errors import DataError, UsageError
from elmo.train.text import find_shards
from elmo.train.vocab import SPECIAL_TOKENS, token_counts, vocab_from_counts, write_vocab

__all__ = ["HELP", "configure", "run"]

HELP = "build a bilm-tf vocabulary file from tokenized text"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo vocab``."""
    parser.add_argument(
        "corpus", nargs="+", metavar="CORPUS_GLOB", help="tokenized text files: one sentence a line"
    )
    parser.add_argument("-o", "--output", required=True, metavar="VOCAB", help="vocabulary file to write")
    parser.add_argument(
        "--min-count", type=int, default=1, metavar="N", help="keep tokens seen at least N times (default: 1)"
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=None,
        metavar="N",
        help="at most N lines, the three special tokens included (the softmax size)",
    )


def run(args: argparse.Namespace) -> int:
    """Count the corpus, write the vocabulary, print a summary to standard error."""
    if args.min_count < 1:
        raise UsageError(f"--min-count: expected an integer >= 1, found {args.min_count}")
    if args.max_size is not None and args.max_size < len(SPECIAL_TOKENS):
        raise UsageError(
            f"--max-size: expected an integer >= {len(SPECIAL_TOKENS)} (the special tokens), "
            f"found {args.max_size}"
        )
    check_destination(args.output)  # before the corpus is counted
    files = find_shards(args.corpus)
    counts = token_counts(files)
    total = sum(counts.values())
    if total == 0:
        raise DataError(f"{', '.join(args.corpus)}: no tokens in {len(files)} file(s)")
    words = vocab_from_counts(counts, min_count=args.min_count, max_size=args.max_size)
    covered = sum(counts[w] for w in words[len(SPECIAL_TOKENS) :])
    write_vocab(words, args.output)
    print(
        f"elmo vocab: {total:,} tokens ({len(counts):,} distinct) in {len(files):,} file(s); "
        f"wrote {len(words):,} entries to {args.output}, covering {100.0 * covered / total:.2f}% of tokens",
        file=sys.stderr,
    )
    return 0
