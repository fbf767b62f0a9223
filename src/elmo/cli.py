"""The ``elmo`` command line: ``embed``, ``info``, ``vocab``, ``train``, ``perplexity``, ``export``, ...

Errors are reported as one line on standard error (``elmo embed: error: ...``) with a
non-zero exit status: 1 for bad input, output or model, 2 for bad arguments, 130 when
interrupted. Tracebacks are only shown with ``ELMO_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        "-m",
        help="model directory holding options.json and weights.hdf5, or a released model's name "
        "(downloaded once; see `elmo models`); default: the small model bundled with the package",
    )
    g.add_argument("--options", help="options.json of the model (with --weights)")
    g.add_argument("--weights", help="weights.hdf5 of the model (with --options)")
    g.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")


def _parser() -> argparse.ArgumentParser:
    from elmo import __version__
    from elmo.embedfile import FILE_LAYERS

    p = argparse.ArgumentParser(prog="elmo", description="ELMo contextual word embeddings.")
    p.add_argument("--version", action="version", version=f"elmo-embeddings {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser(
        "embed",
        help="embed a text file (one tokenized sentence a line) into HDF5",
        description="Embed INPUT (one whitespace-tokenized sentence a line; - for standard input) into "
        "OUTPUT, an HDF5 file with one dataset per line named by its 0-based line number and a "
        "sentence_to_index JSON dataset (the layout of the old `allennlp elmo` command).",
    )
    e.add_argument("input", metavar="INPUT")
    e.add_argument("output", metavar="OUTPUT")
    _add_model_args(e)
    e.add_argument(
        "--layers",
        choices=FILE_LAYERS,
        default="all",
        help="all: [3, n, D] per line; top, average, elmo: [n, D]; default: [D] (default: all)",
    )
    e.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default: 64)")
    e.add_argument(
        "--stateful",
        action="store_true",
        help="carry the LSTM state from batch to batch in file order, as AllenNLP does",
    )
    e.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="type of the stored arrays (default: float32)",
    )
    g = e.add_argument_group("engine")
    g.add_argument(
        "--engine",
        choices=("auto", "fast", "plain"),
        default="auto",
        help="fast: the fast inference engine (what auto picks); plain: the reference model",
    )
    g.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "int8"),
        default="float32",
        help="the fast engine's arithmetic; bfloat16 and int8 trade a little accuracy for speed "
        "on CPUs with bfloat16 or VNNI units (default: float32)",
    )
    g.add_argument(
        "--cache-size",
        type=int,
        default=None,
        help="distinct tokens whose context-free representations the fast engine keeps "
        "(0: none; default: 32768)",
    )
    e.add_argument("--resume", action="store_true", help="continue an interrupted run of the same command")
    e.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT (or an interrupted run) if present"
    )
    e.add_argument(
        "--encoding-errors",
        choices=("strict", "replace"),
        default="strict",
        help="what to do with a line that is not UTF-8: stop (strict) or substitute U+FFFD (replace)",
    )
    e.add_argument("--forget-sentences", action="store_true", help="do not write sentence_to_index")
    e.add_argument(
        "--shard-size",
        type=int,
        default=2048,
        help="lines per saved piece of work; an interrupted run resumes from the last whole piece "
        "(default: 2048)",
    )
    e.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    e.add_argument(
        "--log-interval",
        type=float,
        default=10.0,
        help="seconds between progress lines when standard error is not a terminal (default: 10)",
    )

    i = sub.add_parser("info", help="show a model's configuration, size and outputs")
    i.add_argument("model", nargs="?", metavar="MODEL", help="model directory")
    i.add_argument("--options", help="options.json (with --weights)")
    i.add_argument("--weights", help="weights.hdf5 (with --options)")
    i.add_argument("--json", action="store_true", help="print JSON")

    for name, (module, configure, _, help_text) in _MODULE_COMMANDS.items():
        configure_fn = getattr(importlib.import_module(module), configure)
        configure_fn(sub.add_parser(name, help=help_text, description=help_text))
    return p


# Commands whose handlers live beside the code they drive: name -> (module, configure, run, help).
_MODULE_COMMANDS = {
    "vocab": (
        "elmo.train.vocab",
        "configure_parser",
        "run",
        "build a bilm-tf vocabulary file from tokenized text",
    ),
    "train": ("elmo.train.commands", "configure_train", "run_train", "train or fine-tune a biLM"),
    "perplexity": (
        "elmo.train.commands",
        "configure_perplexity",
        "run_perplexity",
        "full-softmax perplexity of a language model on text files",
    ),
    "export": (
        "elmo.train.commands",
        "configure_export",
        "run_export",
        "write a trained model as options.json + weights.hdf5 (+ its LM head)",
    ),
    "convert": (
        "elmo.convert",
        "configure_parser",
        "run",
        "convert a TF Hub module or bilm-tf checkpoint to options.json + weights.hdf5",
    ),
    "vocab-embeddings": (
        "elmo.vocab_embeddings",
        "configure_parser",
        "run",
        "context-free token embeddings (word_emb) of every word of a vocabulary, to HDF5",
    ),
    "models": ("elmo.download", "configure_models", "run_models", "list the released models known by name"),
    "download": (
        "elmo.download",
        "configure_download",
        "run_download",
        "download released models by name into the cache",
    ),
}


class _UsageError(Exception):
    pass


def _load_model(args: argparse.Namespace, stateful: bool = False):
    import elmo

    model = getattr(args, "model", None)
    if model and (args.options or args.weights):
        raise _UsageError("give either --model or --options with --weights, not both")
    if bool(args.options) != bool(args.weights):
        raise _UsageError("--options and --weights go together")
    engine = {"device": getattr(args, "device", None)}
    for name, key in (("engine", "engine"), ("precision", "dtype"), ("cache_size", "cache_size")):
        if getattr(args, name, None) is not None:
            engine[key] = getattr(args, name)
    if engine.get("cache_size", 0) < 0:
        raise _UsageError(f"--cache-size: expected an integer >= 0, found {engine['cache_size']}")
    if engine.get("engine") == "plain" and engine.get("dtype", "float32") != "float32":
        raise _UsageError(f"--precision {engine['dtype']} needs the fast engine, not --engine plain")
    if args.options:
        return elmo.load(args.options, args.weights, stateful=stateful, **engine)
    if not model or (model == "default" and not Path(model).exists()):
        from elmo.default_model import default_model_dir

        model = default_model_dir()  # the small model bundled with the package
    if not Path(model).is_dir():
        from elmo.download import download_model, is_model_name, not_found_message

        if not is_model_name(model):
            raise FileNotFoundError(not_found_message(model))
        model = download_model(model, progress=False if getattr(args, "quiet", False) else None)
    return elmo.load(model, stateful=stateful, **engine)


class _Reporter:
    """A progress bar on a terminal, periodic log lines otherwise, nothing when quiet."""

    def __init__(self, quiet: bool, interval: float) -> None:
        self.quiet, self.interval = quiet, interval
        self.bar = None
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


def _cmd_embed(args: argparse.Namespace) -> int:
    from elmo.embedfile import EmbedJob, Progress, embed_file

    for flag in ("batch_size", "shard_size"):
        if getattr(args, flag) < 1:
            raise _UsageError(
                f"--{flag.replace('_', '-')}: expected a positive integer, found {getattr(args, flag)}"
            )
    if args.input != "-" and not Path(args.input).exists():
        raise FileNotFoundError(f"{args.input}: input file not found")
    module = _load_model(args, stateful=args.stateful)
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
    summary = embed_file(module, job, Progress(reporter.start, reporter.advance, reporter.finish))
    if not args.quiet:
        print(
            f"elmo embed: wrote {summary['lines']} sentences ({summary['tokens']} tokens) "
            f"to {summary['output']} in {summary['seconds']:.1f} s",
            file=sys.stderr,
        )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    module = _load_model(args)
    cfg = module.config
    n_params = sum(p.numel() for p in module.bilm.parameters())
    proj = cfg.lstm.projection_dim
    outputs = {"word_emb": ["B", "T", proj]}
    for k in range(1, cfg.lstm.n_layers + 1):
        outputs[f"lstm_outputs{k}"] = ["B", "T", 2 * proj]
    outputs.update({"elmo": ["B", "T", 2 * proj], "default": ["B", 2 * proj], "mask": ["B", "T"]})
    info = {"options": cfg.to_dict(), "parameters": n_params, "outputs": outputs}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c, lstm = cfg.char_cnn, cfg.lstm
    print(f"parameters:   {n_params:,} ({n_params * 4 / 2**20:.1f} MB as float32)")
    print(
        f"char CNN:     {len(c.filters)} filters, {c.n_filters} wide, {c.activation}, "
        f"char embedding {c.embedding_dim}, {c.max_characters_per_token} characters per token"
    )
    print(f"highway:      {c.n_highway} layer(s)")
    print(
        f"biLSTM:       {lstm.n_layers} layers x 2 directions, {lstm.dim} cells, "
        f"projection {lstm.projection_dim}, "
        f"cell clip {lstm.cell_clip}, projection clip {lstm.proj_clip}, "
        f"skip connections {'yes' if lstm.use_skip_connections else 'no'}"
    )
    print("outputs:")
    for name, shape in outputs.items():
        print(f"  {name:14s} [{', '.join(map(str, shape))}]")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``elmo`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    name = f"elmo {args.command}"
    # SIGTERM unwinds like Ctrl-C, so temporary files are closed; the partial run stays.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.command in _MODULE_COMMANDS:
            module, _, run, _ = _MODULE_COMMANDS[args.command]
            return getattr(importlib.import_module(module), run)(args)
        return {"embed": _cmd_embed, "info": _cmd_info}[args.command](args)
    except _UsageError as e:
        parser.exit(2, f"{name}: error: {e}\n")
    except KeyboardInterrupt:
        msg = f"{name}: interrupted"
        if args.command == "embed":
            msg += "; OUTPUT was not written; rerun with --resume to continue"
        elif args.command == "train":
            msg += "; the last checkpoint in RUN_DIR is intact; continue with --resume"
        print(msg, file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; the traceback only when debugging
        if os.environ.get("ELMO_DEBUG"):
            raise
        from elmo.errors import ElmoError

        known = isinstance(e, (ElmoError, OSError, ValueError, TypeError))
        text = str(e) if known else f"{type(e).__name__}: {e}"
        print(f"{name}: error: {' '.join(text.split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
