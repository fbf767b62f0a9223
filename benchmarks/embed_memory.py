"""Peak memory of ``elmo embed`` as the input grows: it must stay flat (streaming).

    python benchmarks/embed_memory.py --options O --weights W [--lines 1000 100000]
        [--layers top] [--threads 2] [--distinct] [--compare-src OLD/src]

For each line count, writes a deterministic input file (lines cycled from
``../shared/tools/make_sentences.py --n 5000 --seed 0``; with ``--distinct`` each line
gets its number appended, so every line is distinct and ``sentence_to_index`` grows with
the input), runs the real command in a fresh process, and reads that process's peak RSS
(``ru_maxrss`` of the waited child). Prints one JSON line per run and, at the end, the
difference between the largest and the smallest run. ``--compare-src`` also runs every
size with the package found in another source tree (e.g. an older version's ``src``),
on the same input, one after the other, for a side-by-side comparison.

``--stub-model`` measures the file writer alone (what the number of distinct lines can
grow): the child process runs :func:`elmo.embedfile.embed_file` with a stand-in model
that returns zero vectors (``--layers default``), so a large input takes minutes, not
hours, on a small machine. ``--options``/``--weights`` are then not needed.
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


def _input(path: Path, lines: int, distinct: bool) -> int:
    base = subprocess.run(
        [sys.executable, str(MAKE_SENTENCES), "--n", "5000", "--seed", "0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    tokens = 0
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            line = base[i % len(base)] + (f" {i}" if distinct else "")
            tokens += len(line.split())
            f.write(line + "\n")
    return tokens


# The child of --stub-model: the writer with a model that computes nothing.
_STUB = """
import sys
from pathlib import Path
import numpy as np
import torch
from elmo.embedfile import EmbedJob, embed_file

class _Lstm:
    n_layers = 2

class _Config:
    lstm = _Lstm()
    def to_dict(self):
        return {"stub": 1}

class Stub:
    config, stateful, precision, carried_state = _Config(), False, "float32", None
    device = torch.device("cpu")
    def reset_state(self):
        pass
    def state_dict(self):
        return {}
    def embed_batch(self, batch, layers="all"):
        return [np.zeros(32, dtype=np.float32) for _ in batch]

embed_file(Stub(), EmbedJob(input=sys.argv[1], output=Path(sys.argv[2]), layers="default", overwrite=True))
"""


def _run(args: argparse.Namespace, lines: int, work: Path, src_dir: str | None) -> dict:
    src, out = work / f"in-{lines}.txt", work / f"out-{lines}.hdf5"
    tokens = _input(src, lines, args.distinct)
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
    if args.stub_model:
        cmd = [sys.executable, "-c", _STUB, str(src), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = src_dir or str(ROOT / "src")
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
        "layers": "default" if args.stub_model else args.layers,
        "threads": args.threads,
        "stub_model": args.stub_model,
        "distinct": args.distinct,
        "src": src_dir or "this tree",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--options", default="")
    p.add_argument("--weights", default="")
    p.add_argument("--stub-model", action="store_true", help="the writer alone, with a stand-in model")
    p.add_argument("--lines", type=int, nargs="+", default=[1000, 100000])
    p.add_argument("--layers", default="top")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--distinct", action="store_true", help="make every input line distinct")
    p.add_argument("--compare-src", help="also run with the package in this source tree")
    a = p.parse_args()
    if not a.stub_model and not (a.options and a.weights):
        p.error("--options and --weights are needed (or --stub-model)")
    trees: list[str | None] = [None] if a.compare_src is None else [a.compare_src, None]
    results: dict[str | None, list[dict]] = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for lines in a.lines:
            for tree in trees:
                results[tree].append(_run(a, lines, Path(tmp), tree))
                print(json.dumps(results[tree][-1]), flush=True)
    for tree, runs in results.items():
        growth = runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"]
        print(json.dumps({"src": tree or "this tree", "peak_rss_growth_mb": round(growth, 1)}))


if __name__ == "__main__":
    main()
