"""Command-line handlers of ``elmo train``, ``elmo perplexity`` and ``elmo export``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

__all__ = [
    "configure_export",
    "configure_perplexity",
    "configure_train",
    "run_export",
    "run_perplexity",
    "run_train",
]


def configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--options", help="options.json with the model and training options (bilm-tf's keys)")
    p.add_argument("--vocab", help="vocabulary file: <S>, </S>, <UNK> then words by frequency")
    p.add_argument(
        "--train", nargs="+", metavar="GLOB", help="training shards: one tokenized sentence a line"
    )
    p.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, log, options)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in RUN_DIR exactly where it stopped"
    )
    p.add_argument(
        "--init-from",
        metavar="MODEL",
        help="fine-tune: start from this model (run dir, checkpoint, exported model or bilm-tf checkpoint)",
    )
    p.add_argument("--reset-softmax", action="store_true", help="with --init-from: new softmax")
    p.add_argument("--reset-optimizer", action="store_true", help="with --init-from: fresh Adagrad state")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, help="stop after this many steps in all (overrides n_epochs)")
    p.add_argument(
        "--save-every", type=int, default=1250, metavar="STEPS", help="checkpoint interval (steps)"
    )
    p.add_argument(
        "--save-minutes", type=float, default=30.0, metavar="MIN", help="checkpoint at least this often"
    )
    p.add_argument("--log-every", type=int, default=10, metavar="STEPS", help="log.csv interval (steps)")
    p.add_argument("--no-shuffle", action="store_true", help="read shards and lines in order")
    p.add_argument("--partitions", type=int, help="data partitions (default: the world size)")
    p.add_argument("--device", help="torch device (default: cuda for the local rank if present, else cpu)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    from elmo.train.trainer import RunSettings, Trainer, TrainError

    logging.basicConfig(level=logging.INFO, format="elmo train: %(message)s")
    if not args.resume and (args.options is None or args.vocab is None or not args.train):
        raise TrainError("a new run needs --options, --vocab and --train (or --resume to continue one)")
    settings = RunSettings(
        train=list(args.train or []),
        seed=args.seed,
        max_steps=args.max_steps,
        save_every_steps=args.save_every,
        save_every_minutes=args.save_minutes,
        log_every=args.log_every,
        shuffle=not args.no_shuffle,
        device=args.device,
        progress=not args.quiet,
        init_from=args.init_from,
        reset_softmax=args.reset_softmax,
        reset_optimizer=args.reset_optimizer,
        partitions=args.partitions,
    )
    trainer = Trainer(args.out, options=args.options, vocab=args.vocab, settings=settings, resume=args.resume)
    try:
        history = trainer.run()
    finally:
        trainer.world.close()
    if history and trainer.world.is_main:
        last = history[-1]
        print(
            f"elmo train: step {trainer.step}/{trainer.total_steps}, loss {last['loss']:.4f} "
            f"(perplexity {last['perplexity']:.2f}); checkpoint in {args.out}",
            file=sys.stderr,
        )
    return 0


def configure_perplexity(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", metavar="MODEL", help="run dir, checkpoint.pt, exported model or bilm-tf checkpoint dir"
    )
    p.add_argument("--vocab", help="vocabulary (default: the model's vocab.txt)")
    p.add_argument("--data", nargs="+", required=True, metavar="GLOB", help="text files: one sentence a line")
    p.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="positions scored per step; any value gives the same result (default: 256)",
    )
    p.add_argument("--device", help="torch device (default: cpu)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run_perplexity(args: argparse.Namespace) -> int:
    from elmo.train.evaluate import perplexity
    from elmo.train.models import ModelError, load_language_model
    from elmo.train.text import DataError, find_shards, read_sentences
    from elmo.train.vocab import Vocabulary

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, found {args.batch_size}")
    loaded = load_language_model(args.model)
    if args.vocab:
        vocab = Vocabulary.from_file(args.vocab)
    elif loaded.vocab is not None:
        vocab = loaded.vocab
    else:
        raise ModelError(f"{args.model}: has no vocab.txt; pass --vocab")
    if vocab.size != loaded.model.vocab_size:
        raise ModelError(
            f"the vocabulary has {vocab.size} words but the model's softmax has "
            f"{loaded.model.vocab_size} rows"
        )
    files = find_shards(args.data)
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
    except ValueError as e:
        raise DataError(f"{', '.join(args.data)}: {e}") from None
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(result.as_dict()))
    return 0


def configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_DIR", help="run directory, checkpoint.pt or bilm-tf checkpoint dir")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")


def run_export(args: argparse.Namespace) -> int:
    from elmo.train.models import export_model

    out = export_model(args.source, args.output, overwrite=args.overwrite)
    print(f"elmo export: wrote {out}/options.json, weights.hdf5, lm_head.hdf5", file=sys.stderr)
    return 0
