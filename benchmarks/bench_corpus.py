"""``elmo embed-corpus`` on Ray against ``elmo embed``: throughput at equal cores, and memory.

Throughput: the same sentences (the first ``--tokens`` tokens of WikiText-2's training
sentences from ``../shared/data``, else generated text), embedded by

- ``elmo embed`` (one process; torch's default threads, one per core),
- ``elmo embed-corpus`` on a local Ray with 1 worker × ``--cores`` threads,
- ``elmo embed-corpus`` with ``--cores`` workers × 1 thread,

each a fresh command, run one after another in each round (rounds alternate the order),
so that the machine's load falls on all of them alike. tokens/s is over the command's
whole wall time (process start, Ray start, model loading included) and, beside it, over
the time the command reports for embedding alone.

Memory: the driver's peak RSS (``VmHWM``) for ``--lines`` and 10 × ``--lines`` short
lines (the tiny random model, since the driver's memory does not depend on the model),
and each worker's peak RSS as recorded in the manifest.

    python benchmarks/bench_corpus.py --tokens 200000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2" / "sentences" / "train"


def corpus(folder: Path, tokens: int, files: int) -> tuple[int, int]:
    """Write ``files`` text files holding the first ``tokens`` tokens; (lines, tokens)."""
    lines: list[str] = []
    count = 0
    sources = sorted(WIKITEXT.glob("*.txt")) if WIKITEXT.is_dir() else []
    rng = random.Random(0)
    words = "the of and to in a is was for on as with by he it at from his an were".split()
    stream = (line for path in sources for line in path.read_text(encoding="utf-8").splitlines())
    while count < tokens:
        line = next(stream, None)
        if line is None:  # no WikiText-2, or not enough of it: generated sentences
            line = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
        if line.split():
            lines.append(line)
            count += len(line.split())
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(lines) // files)
    for k in range(files):
        (folder / f"part-{k}.txt").write_text("".join(s + "\n" for s in lines[k * per : (k + 1) * per]))
    return len(lines), count


def timed(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command``; wall seconds, the seconds it reports, and its peak RSS (MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(re.search(r"VmHWM:\s+(\d+)", status).group(1)))  # type: ignore[union-attr]
        except (OSError, AttributeError):
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    reported = re.findall(r" in ([0-9.]+) s", err)
    return {"wall": wall, "seconds": float(reported[-1]) if reported else wall, "driver_rss_mb": peak / 1024}


def worker_rss(out_dir: Path) -> float:
    records = json.loads((out_dir / "manifest.json").read_text())["records"].values()
    return max((r["max_rss_mb"] for r in records), default=0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lines", type=int, default=20_000, help="driver memory: this and 10 times this")
    p.add_argument("--skip-memory", action="store_true")
    a = p.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    work = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    elmo = [sys.executable, "-m", "elmo"]
    common = ["--layers", "top", "--batch-size", str(a.batch_size)]
    try:
        lines, tokens = corpus(work / "corpus", a.tokens, files=4)
        text = work / "all.txt"
        text.write_text("".join(p.read_text() for p in sorted((work / "corpus").glob("*.txt"))))
        configs = {
            "elmo embed, 1 process": lambda out: [
                *elmo, "embed", str(text), str(out), "--overwrite", *common,
            ],
            f"Ray, 1 worker x {a.cores} threads": lambda out: [
                *elmo, "embed-corpus", str(work / "corpus" / "*.txt"), str(out), "--workers", "1",
                "--threads", str(a.cores), "--shard-lines", "1", *common,
            ],
            f"Ray, {a.cores} workers x 1 thread": lambda out: [
                *elmo, "embed-corpus", str(work / "corpus" / "*.txt"), str(out), "--workers", str(a.cores),
                "--threads", "1", "--shard-lines", "1", *common,
            ],
        }  # fmt: skip
        results: dict[str, list[dict]] = {name: [] for name in configs}
        for r in range(a.rounds):
            order = list(configs) if r % 2 == 0 else list(reversed(configs))
            for name in order:
                out = work / f"out-{len(results[name])}-{name.split(',')[1].strip().replace(' ', '')}"
                out = out.with_suffix(".hdf5") if name.startswith("elmo embed") else out
                run = timed(configs[name](out), env)
                if not name.startswith("elmo embed"):
                    run["worker_rss_mb"] = worker_rss(out)
                    shutil.rmtree(out)
                else:
                    out.unlink()
                results[name].append(run)
                print(f"round {r}: {name}: {tokens / run['wall']:.0f} tokens/s", file=sys.stderr, flush=True)
        print(f"\n{lines} lines, {tokens} tokens, --layers top, batch {a.batch_size}, {a.rounds} round(s)")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print("| configuration | tokens/s, whole command | tokens/s, embedding | peak RSS, worker |")
        print("|---|---|---|---|")
        base = None
        for name, runs in results.items():
            wall = min(r["wall"] for r in runs)
            seconds = min(r["seconds"] for r in runs)
            rss = max(r.get("worker_rss_mb", r["driver_rss_mb"]) for r in runs)
            base = base or tokens / wall
            speed = f"{tokens / wall:.0f} ({tokens / wall / base:.0%}) | {tokens / seconds:.0f}"
            print(f"| {name} | {speed} | {rss:.0f} MB |")
        if not a.skip_memory:
            memory(a, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def memory(a: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from elmo.testing import write_random_model

    model = work / "tiny"
    write_random_model(model, "tiny", 1, 1)
    rng = random.Random(1)
    print("\n| lines | shards | driver peak RSS | worker peak RSS | seconds |")
    print("|---|---|---|---|---|")
    for n in (a.lines, 10 * a.lines):
        folder = work / f"short-{n}"
        folder.mkdir()
        (folder / "a.txt").write_text("".join(f"w{rng.randint(0, 999)} x\n" for _ in range(n)))
        out = work / f"mem-{n}"
        run = timed(
            [sys.executable, "-m", "elmo", "embed-corpus", str(folder / "a.txt"), str(out), "-m", str(model),
             "--workers", str(a.cores), "--layers", "top", "--shard-lines", "1024"],
            env,
        )  # fmt: skip
        shards = len(json.loads((out / "manifest.json").read_text())["shards"])
        rss = f"{run['driver_rss_mb']:.0f} MB | {worker_rss(out):.0f} MB"
        print(f"| {n} | {shards} | {rss} | {run['wall']:.0f} |")
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
