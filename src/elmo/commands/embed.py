"""``elmo embed``: embed a text file into HDF5, resumably, with progress output."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from elmo.commands._model import add_engine_args, add_model_args, load_model
from elmo.embedfile import FILE_LAYERS, EmbedJob, Progress, embed_file
from elmo.errors import UsageError

__all__ = ["HELP", "INTERRUPTED", "configure", "run"]

HELP = "embed a text file (one tokenized sentence a line) into HDF5"
INTERRUPTED = "OUTPUT was not written; rerun with --resume to continue"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo embed``."""
    parser.description = (
        "Embed INPUT (one whitespace-tokenized sentence a line; - for standard input) into "
        "OUTPUT, an HDF5 file with one dataset per line named by its 0-based line number and a "
        "sentence_to_index JSON dataset (the layout of the old `allennlp elmo` command)."
    )
    parser.add_argument("input", metavar="INPUT")
    parser.add_argument("output", metavar="OUTPUT")
    add_model_args(parser)
    parser.add_argument(
        "--layers",
        choices=FILE_LAYERS,
        default="all",
        help="all: [3, n, D] per line; top, average, elmo: [n, D]; default: [D] (default: all)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default: 64)")
    parser.add_argument(
        "--stateful",
        action="store_true",
        help="carry the LSTM state from batch to batch in file order, as AllenNLP does",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="type of the stored arrays (default: float32)",
    )
    add_engine_args(parser)
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run of the same command"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT (or an interrupted run) if present"
    )
    parser.add_argument(
        "--encoding-errors",
        choices=("strict", "replace"),
        default="strict",
        help="what to do with a line that is not UTF-8: stop (strict) or substitute U+FFFD (replace)",
    )
    parser.add_argument("--forget-sentences", action="store_true", help="do not write sentence_to_index")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=2048,
        help="lines per saved piece of work; an interrupted run resumes from the last whole piece "
        "(default: 2048)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    parser.add_argument(
        "--log-interval",
        type=float,
        default=10.0,
        help="seconds between progress lines when standard error is not a terminal (default: 10)",
    )


def run(args: argparse.Namespace) -> int:
    """Embed the file; a summary line on standard error unless ``--quiet``."""
    for flag in ("batch_size", "shard_size"):
        if getattr(args, flag) < 1:
            raise UsageError(
                f"--{flag.replace('_', '-')}: expected a positive integer, found {getattr(args, flag)}"
            )
    if args.input != "-" and not Path(args.input).exists():
        raise FileNotFoundError(f"{args.input}: input file not found")
    if hasattr(signal, "SIGXFSZ"):  # a file size limit: an EFBIG error to report, not a kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    module = load_model(args, stateful=args.stateful)
    job = EmbedJob(
        input=args.input,
        output=Path(args.output),
        layers=args.layers,
        batch_size=args.batch_size,
        store_dtype=args.dtype,
        encoding_errors=args.encoding_errors,
        resume=args.resume,
        overwrite=args.overwrite,
        forget_sentences=args.forget_sentences,
        shard_size=args.shard_size,
    )
    reporter = _Reporter(args.quiet, args.log_interval)
    progress = Progress(reporter.start, reporter.advance, reporter.finish, reporter.warn)
    summary = embed_file(module, job, progress)
    if not args.quiet:
        print(
            f"elmo embed: wrote {summary['lines']} sentences ({summary['tokens']} tokens) "
            f"to {summary['output']} in {summary['seconds']:.1f} s",
            file=sys.stderr,
        )
    return 0


class _Reporter:
    """A progress bar on a terminal, periodic log lines otherwise, nothing when quiet."""

    def __init__(self, quiet: bool, interval: float) -> None:
        self.quiet, self.interval = quiet, interval
        self.bar: Any = None
        self.lines = self.tokens = 0
        self.total: int | None = None
        self.t0 = self.last = time.monotonic()

    def start(self, total: int | None, done: int) -> None:
        self.total, self.lines = total, done
        self.t0 = self.last = time.monotonic()
        if self.quiet:
            return
        if done:
            print(f"elmo embed: resuming after line {done}", file=sys.stderr)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="sent", desc="embedding", dynamic_ncols=True)

    def warn(self, text: str) -> None:
        """Shown even when quiet: something about the run the user should know."""
        if self.bar is not None:
            self.bar.write(f"elmo embed: {text}", file=sys.stderr)
        else:
            print(f"elmo embed: {text}", file=sys.stderr, flush=True)

    def advance(self, lines: int, tokens: int) -> None:
        self.lines += lines
        self.tokens += tokens
        if self.quiet:
            return
        now = time.monotonic()
        if self.bar is not None:
            self.bar.update(lines)
            if now - self.last > 0.5:
                self.bar.set_postfix_str(
                    f"{self.tokens / max(now - self.t0, 1e-9):.0f} tokens/s", refresh=False
                )
                self.last = now
        elif now - self.last >= self.interval:
            self.last = now
            self._log(now)

    def _log(self, now: float) -> None:
        rate = self.tokens / max(now - self.t0, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        print(f"elmo embed: {self.lines}{of} sentences, {rate:.0f} tokens/s", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet:
            self._log(time.monotonic())
