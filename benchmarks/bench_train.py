"""Training throughput of ``elmo train``'s step on this machine.

    python benchmarks/bench_train.py [--options recipes/default/options.json] [--steps 20]
        [--warmup 3] [--threads 2] [--batch-size N] [--append]

Builds the vocabulary of WikiText-2's training sentences (``../shared/data``), then
times ``--steps`` optimisation steps (after ``--warmup`` untimed ones) of the model in
the options file on batches from the real data pipeline: forward and backward
directions, sampled softmax as the options say, gradient clipping and Adagrad. Reports
tokens/s (positions per direction, i.e. ``batch_size * unroll_steps`` per step, as
bilm-tf counts them), seconds per step and peak RSS, and with ``--append`` adds the
table, the command and the machine to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT.parent / "shared" / "data" / "wikitext-2" / "sentences" / "train" / "*"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--options", default=str(ROOT / "recipes" / "default" / "options.json"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, help="override the options' batch_size")
    p.add_argument("--append", action="store_true", help="append the result to benchmarks/RESULTS.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from elmo.config import ElmoConfig
    from elmo.train.data import LMBatches
    from elmo.train.lm import TrainingBiLM, init_like_bilm_tf
    from elmo.train.optim import Adagrad
    from elmo.train.text import find_shards
    from elmo.train.trainer import train_step
    from elmo.train.vocab import Vocabulary, build_vocab

    options = json.loads(Path(args.options).read_text())
    if args.batch_size:
        options["batch_size"] = args.batch_size
    vocab = Vocabulary(build_vocab(find_shards(str(TRAIN))))
    options["n_tokens_vocab"] = vocab.size
    config = ElmoConfig.from_dict(options)
    model = TrainingBiLM(config, vocab.size)
    init_like_bilm_tf(model, torch.Generator().manual_seed(0))
    optimizer = Adagrad(dict(model.named_parameters()), lr=options.get("learning_rate", 0.2))
    rows, steps = options["batch_size"], options["unroll_steps"]
    batches = LMBatches(str(TRAIN), vocab, rows, steps, config.char_cnn.max_characters_per_token, seed=0)
    generator = torch.Generator().manual_seed(0)
    state = None
    times = []
    for i in range(args.warmup + args.steps):
        batch = {k: torch.as_tensor(v) for k, v in next(batches).items()}
        t0 = time.perf_counter()
        _, state = train_step(
            model, optimizer, batch, state, steps, options.get("all_clip_norm_val", 10.0), generator
        )
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    per_step = sum(times) / len(times)
    tokens = rows * steps / per_step
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_params = sum(p.numel() for p in model.parameters())
    lstm, cnn = config.lstm, config.char_cnn
    sampled = options.get("sample_softmax", True)
    negatives = options.get("n_negative_samples_batch", 8192) if sampled else "full"
    result = {
        "options": args.options,
        "lstm": f"{lstm.n_layers}x{lstm.dim}/{lstm.projection_dim}",
        "char_filters": cnn.n_filters,
        "vocab": vocab.size,
        "batch": f"{rows}x{steps}",
        "negatives": negatives,
        "parameters": n_params,
        "seconds_per_step": per_step,
        "best_seconds_per_step": min(times),
        "tokens_per_s": tokens,
        "peak_rss_mb": rss,
        "threads": args.threads,
    }
    print(json.dumps(result))
    model_name = f"{result['lstm']} LSTM, {result['char_filters']} char filters"
    cells = [
        model_name,
        f"{vocab.size:,}",
        result["batch"],
        str(negatives),
        f"{n_params:,}",
        f"{per_step:.2f}, {min(times):.2f}",
        f"{tokens:,.0f}",
        f"{rss:,.0f}",
    ]
    table = (
        "| model | vocab | batch | negatives | parameters | s/step (mean, best) | tokens/s | peak RSS MB |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| " + " | ".join(cells) + " |\n"
    )
    print(table)
    if args.append:
        command = "python benchmarks/bench_train.py " + " ".join(sys.argv[1:])
        text = (
            f"\n### Training throughput ({time.strftime('%Y-%m-%d')})\n\n"
            f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{args.threads} thread(s); {args.steps} timed steps after {args.warmup} warm-up steps, "
            "WikiText-2 training sentences, real data pipeline.\n\n"
            f"    {command}\n\n{table}"
        )
        with (ROOT / "benchmarks" / "RESULTS.md").open("a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
