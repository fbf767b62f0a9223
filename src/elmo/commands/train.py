"""``elmo train``: train a biLM from scratch or fine-tune one, as bilm-tf does, resumably."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["HELP", "INTERRUPTED", "configure", "run"]

HELP = "train or fine-tune a biLM"
INTERRUPTED = "the last checkpoint in RUN_DIR is intact; continue with --resume"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo train``."""
    parser.add_argument("--options", help="options.json with the model and training options (bilm-tf's keys)")
    parser.add_argument("--vocab", help="vocabulary file: <S>, </S>, <UNK> then words by frequency")
    parser.add_argument(
        "--train", nargs="+", metavar="GLOB", help="training shards: one tokenized sentence a line"
    )
    parser.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, log, options)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in RUN_DIR exactly where it stopped"
    )
    parser.add_argument(
        "--init-from",
        metavar="MODEL",
        help="fine-tune: start from this model (run dir, checkpoint, exported model or bilm-tf checkpoint)",
    )
    parser.add_argument("--reset-softmax", action="store_true", help="with --init-from: new softmax")
    parser.add_argument(
        "--reset-optimizer", action="store_true", help="with --init-from: fresh Adagrad state"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-steps", type=int, help="stop after this many steps in all (overrides n_epochs)"
    )
    parser.add_argument(
        "--save-every", type=int, default=1250, metavar="STEPS", help="checkpoint interval (steps)"
    )
    parser.add_argument(
        "--save-minutes", type=float, default=30.0, metavar="MIN", help="checkpoint at least this often"
    )
    parser.add_argument("--log-every", type=int, default=10, metavar="STEPS", help="log.csv interval (steps)")
    parser.add_argument("--no-shuffle", action="store_true", help="read shards and lines in order")
    parser.add_argument("--partitions", type=int, help="data partitions (default: the world size)")
    # Not the inference --device: training defaults to this process's GPU under torchrun.
    parser.add_argument(
        "--device", help="torch device (default: cuda for the local rank if present, else cpu)"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the training; the last step's loss on standard error (main process only)."""
    from elmo.errors import TrainError
    from elmo.train.trainer import RunSettings, Trainer

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
        trainer.close()
    if history and trainer.world.is_main:
        last = history[-1]
        print(
            f"elmo train: step {trainer.step}/{trainer.total_steps}, loss {last['loss']:.4f} "
            f"(perplexity {last['perplexity']:.2f}); checkpoint in {args.out}",
            file=sys.stderr,
        )
    return 0
