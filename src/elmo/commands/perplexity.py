"""``elmo perplexity``: bilm-tf's full-softmax perplexity of a language model, as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from elmo.commands._model import add_device_arg, check_device

__all__ = ["HELP", "configure", "run"]

HELP = "full-softmax perplexity of a language model on text files"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo perplexity``."""
    # A language model (with its softmax), not an embedder: not the shared --model arguments.
    parser.add_argument(
        "model", metavar="MODEL", help="run dir, checkpoint.pt, exported model or bilm-tf checkpoint dir"
    )
    parser.add_argument("--vocab", help="vocabulary (default: the model's vocab.txt)")
    parser.add_argument(
        "--data", nargs="+", required=True, metavar="GLOB", help="text files: one sentence a line"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="positions scored per step; any value gives the same result (default: 256)",
    )
    add_device_arg(parser)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Score the text files; the result as one JSON line on standard output."""
    from elmo.errors import DataError, ModelError, UsageError
    from elmo.train.evaluate import perplexity
    from elmo.train.models import load_language_model
    from elmo.train.text import find_shards, read_sentences
    from elmo.train.vocab import Vocabulary

    if args.batch_size < 1:
        raise UsageError(f"--batch-size: expected a positive integer, found {args.batch_size}")
    # What can be refused without the model is refused before loading it.
    check_device(args.device)
    files = find_shards(args.data)
    given = Vocabulary.from_file(args.vocab) if args.vocab else None
    loaded = load_language_model(args.model)
    vocab = given if given is not None else loaded.vocab
    if vocab is None:
        raise ModelError(f"{args.model}: has no vocab.txt; pass --vocab")
    if vocab.size != loaded.model.vocab_size:
        raise ModelError(
            f"{args.vocab or args.model}: the vocabulary has {vocab.size} words but the softmax of "
            f"{args.model} has {loaded.model.vocab_size} rows"
        )
    if args.device:
        loaded.model.to(args.device)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(unit="tok", dynamic_ncols=True, file=sys.stderr)
    try:
        result = perplexity(
            loaded.model, vocab, read_sentences(files), chunk_tokens=args.batch_size, progress=bar
        )
    except DataError:
        raise  # names its file and line already
    except ValueError as e:
        raise DataError(f"{', '.join(args.data)}: {e}") from None
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(result.as_dict()))
    return 0
