"""Inference speed of this project and of AllenNLP, side by side in one run.

    python benchmarks/bench_inference.py --peer PEER_VENV/bin/python \
        [--sizes small original] [--limit 300] [--batch-size 64] [--threads 2] [--append]

Same weights (``make_random_elmo.py --seed 1 --gain 1``), same sentences (the first
``--limit`` lines of ``make_sentences.py --n 2000 --seed 0``), same thread count, same
length bucketing (sentences sorted by length, batches of ``--batch-size``), all three
layers, stateless. Each system runs in a fresh process, so peak RSS (``ru_maxrss``,
model loading included) is comparable. AllenNLP runs through
``../shared/tools/peer/bench_allennlp.py --sort`` in its own virtual environment
(``../shared/tools/peer/setup_peer.sh``).

Prints one JSON line per measurement and a Markdown table; ``--append`` adds the table,
the command and the machine to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT.parent / "shared" / "tools"
CACHE = ROOT / ".models"


def _model(size: str) -> Path:
    out = CACHE / f"{size}_seed1_gain1"
    if not (out / "weights.hdf5").is_file():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                str(TOOLS / "make_random_elmo.py"),
                "--size",
                size,
                "--seed",
                "1",
                "--gain",
                "1",
                "--out",
                str(out),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


def _sentences(path: Path, limit: int) -> None:
    text = subprocess.run(
        [sys.executable, str(TOOLS / "make_sentences.py"), "--n", "2000", "--seed", "0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path.write_text("\n".join(text.splitlines()[:limit]) + "\n", encoding="utf-8")


def _worker(a: argparse.Namespace) -> None:
    """Measure this project in this (fresh) process; print one JSON line."""
    import torch

    import elmo

    torch.set_num_threads(a.threads)
    sents = [
        line.split() for line in Path(a.sentences).read_text(encoding="utf-8").splitlines() if line.split()
    ]
    sents.sort(key=len)
    m = elmo.load(a.model)
    n_tok = sum(map(len, sents))
    with torch.no_grad():
        m(tokens=sents[:2])  # warm-up, as the peer does
        t0 = time.perf_counter()
        for s in range(0, len(sents), a.batch_size):
            m(tokens=sents[s : s + a.batch_size])
        dt = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "system": "elmo-embeddings (plain fp32)",
                "sentences": len(sents),
                "tokens": n_tok,
                "seconds": round(dt, 3),
                "tokens_per_s": round(n_tok / dt, 1),
                "sentences_per_s": round(len(sents) / dt, 2),
                "batch_size": a.batch_size,
                "threads": a.threads,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def _run_json(cmd: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer", required=False, help="python of the AllenNLP virtual environment")
    p.add_argument("--sizes", nargs="+", default=["small", "original"], choices=["small", "original"])
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--sentences", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        _worker(a)
        return
    if not a.peer:
        p.error("--peer is required (the python of the AllenNLP venv from setup_peer.sh)")
    sentences = ROOT / ".models" / f"bench_sentences_{a.limit}.txt"
    sentences.parent.mkdir(exist_ok=True)
    _sentences(sentences, a.limit)
    rows = []
    for size in a.sizes:
        model = _model(size)
        common = [
            "--sentences",
            str(sentences),
            "--batch-size",
            str(a.batch_size),
            "--threads",
            str(a.threads),
        ]
        ours = _run_json([sys.executable, __file__, "--worker", "--model", str(model), *common], a.threads)
        peer = _run_json(
            [
                a.peer,
                str(TOOLS / "peer" / "bench_allennlp.py"),
                "--options",
                str(model / "options.json"),
                "--weights",
                str(model / "weights.hdf5"),
                *common,
                "--sort",
            ],
            a.threads,
        )
        for r in (ours, peer):
            r["model"] = size
            print(json.dumps(r))
        rows.append((size, ours, peer))
    cmd = "python benchmarks/bench_inference.py --peer PEER_VENV/bin/python " + " ".join(
        [
            f"--sizes {' '.join(a.sizes)}",
            f"--limit {a.limit}",
            f"--batch-size {a.batch_size}",
            f"--threads {a.threads}",
        ]
    )
    lines = [
        f"### Inference, side by side ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {_cpu()}, {os.cpu_count()} cores, torch threads {a.threads}; batch {a.batch_size}, "
        f"sentences sorted by length, {a.limit} sentences, all three layers, stateless.",
        "",
        f"    {cmd}",
        "",
        "| model | system | tokens/s | sentences/s | peak RSS MB | speed vs AllenNLP |",
        "|---|---|---|---|---|---|",
    ]
    for size, ours, peer in rows:
        for r in (ours, peer):
            ratio = r["tokens_per_s"] / peer["tokens_per_s"]
            lines.append(
                f"| {size} | {r['system']} | {r['tokens_per_s']} | {r['sentences_per_s']} | "
                f"{r['peak_rss_mb']} | {ratio:.2f}x |"
            )
    table = "\n".join(lines) + "\n"
    print(table)
    if a.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + table)


if __name__ == "__main__":
    main()
