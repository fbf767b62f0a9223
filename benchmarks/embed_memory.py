"""Peak memory of ``elmo embed`` as the input grows: it must stay flat (streaming).

    python benchmarks/embed_memory.py --options O --weights W [--lines 1000 100000]
        [--layers top] [--threads 2]

For each line count, writes a deterministic input file (lines cycled from
``../shared/tools/make_sentences.py --n 5000 --seed 0``), runs the real command in a fresh
process, and reads that process's peak RSS (``ru_maxrss`` of the waited child). Prints
one JSON line per run and, at the end, the difference between the largest and the
smallest run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAKE_SENTENCES = ROOT.parent / "shared" / "tools" / "make_sentences.py"


def _input(path: Path, lines: int) -> int:
    base = subprocess.run(
        [sys.executable, str(MAKE_SENTENCES), "--n", "5000", "--seed", "0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    tokens = 0
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            line = base[i % len(base)]
            tokens += len(line.split())
            f.write(line + "\n")
    return tokens


def _run(args: argparse.Namespace, lines: int, work: Path) -> dict:
    src, out = work / f"in-{lines}.txt", work / f"out-{lines}.hdf5"
    tokens = _input(src, lines)
    cmd = [
        sys.executable,
        "-m",
        "elmo",
        "embed",
        str(src),
        str(out),
        "--options",
        args.options,
        "--weights",
        args.weights,
        "--layers",
        args.layers,
        "--quiet",
        "--overwrite",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    # a fresh child per run, so ru_maxrss of this child alone is read by wait4
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"elmo embed failed for {lines} lines (status {status})")
    size = out.stat().st_size
    out.unlink()
    src.unlink()
    return {
        "lines": lines,
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "output_mb": round(size / 2**20, 1),
        "layers": args.layers,
        "threads": args.threads,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--options", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--lines", type=int, nargs="+", default=[1000, 100000])
    p.add_argument("--layers", default="top")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for lines in a.lines:
            results.append(_run(a, lines, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    growth = results[-1]["peak_rss_mb"] - results[0]["peak_rss_mb"]
    print(json.dumps({"peak_rss_growth_mb": round(growth, 1)}))


if __name__ == "__main__":
    main()
