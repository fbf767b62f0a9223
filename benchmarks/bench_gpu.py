"""The fast engine on a GPU: speed, memory and accuracy against the CPU's float32 model.

    PYTHONPATH=src python benchmarks/bench_gpu.py [--device cuda] [--models default original] \\
        [--sentences 600] [--batch-sizes 64 256] [--dtypes float32 bfloat16] [--append]

Self-contained (no files outside the repository): ``default`` is the bundled model;
``original`` is a randomly initialized biLM of the original ELMo's size (4096 cells,
512-wide projections, 2048 char filters; seeded, weights scaled by 1/sqrt(fan-in)).
Sentences are synthetic, seeded: 5 to 60 tokens drawn from the bundled model's
vocabulary with Zipf-like frequencies, sorted by length and cut into batches.

For each model: the plain model on the CPU in float32 is the reference. On ``--device``
the script times the plain model and the fast engine in each of ``--dtypes`` at each of
``--batch-sizes`` (all three layers, stateless, one warm-up batch, the device
synchronized around the timed loop, the token cache emptied first), and reports tokens/s,
the peak device memory, and the accuracy on the first ``--accuracy-limit`` sentences:
float32 (TF32 off) as the largest absolute difference from the CPU reference,
bfloat16 as per-token cosine similarity (mean and minimum, worst layer). ``float32-tf32``
in ``--dtypes`` also times float32 with TF32 allowed (its accuracy is reported the
same way as float32's).

Prints one JSON line per measurement and a Markdown table; ``--append`` adds it, the
command and the device to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import elmo  # noqa: E402
from elmo.chars import batch_to_char_ids  # noqa: E402
from elmo.config import ElmoConfig  # noqa: E402
from elmo.engine import FastBiLM  # noqa: E402
from elmo.model import ElmoBiLM  # noqa: E402

DTYPES = ("float32", "float32-tf32", "bfloat16")
ORIGINAL = {
    "lstm": {
        "dim": 4096,
        "projection_dim": 512,
        "n_layers": 2,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": True,
    },
    "char_cnn": {
        "embedding": {"dim": 16},
        "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]],
        "n_highway": 2,
        "activation": "relu",
        "n_characters": 262,
        "max_characters_per_token": 50,
    },
}


def _random_original(seed: int) -> ElmoBiLM:
    torch.manual_seed(seed)
    bilm = ElmoBiLM(ElmoConfig.from_dict(ORIGINAL))
    with torch.no_grad():
        for name, p in bilm.named_parameters():
            if p.dim() == 1:
                p.zero_()
            elif name.endswith("char_embed"):
                p.normal_()
                p[0] = 0
            else:
                fan_in = p.shape[-3] * p.shape[-2] if p.dim() == 4 else p.shape[0]
                p.normal_(0.0, fan_in**-0.5)
    return bilm.eval()


def _model(name: str) -> ElmoBiLM:
    return elmo.load("default", engine="plain").bilm if name == "default" else _random_original(1)


def _sentences(n: int, seed: int) -> list[list[str]]:
    vocab_path = ROOT / "src" / "elmo" / "models" / "default" / "vocab.txt"
    words = [w for w in vocab_path.read_text(encoding="utf-8").split("\n") if w][3:]  # no <S> </S> <UNK>
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(len(words)) + 10.0)
    p /= p.sum()
    lengths = rng.integers(5, 61, size=n)
    return [[words[i] for i in rng.choice(len(words), size=k, p=p)] for k in lengths]


@contextmanager
def _tf32(allowed: bool):
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _speed(run, sents: list[list[str]], batch_size: int, device: torch.device) -> dict:
    batches = [batch_to_char_ids(sents[s : s + batch_size]) for s in range(0, len(sents), batch_size)]
    with torch.no_grad():
        run(batches[0])  # warm-up (kernel selection, workspace)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        for ids in batches:
            run(ids)
        _sync(device)
        dt = time.perf_counter() - t0
    n_tok = sum(map(len, sents))
    out = {"tokens_per_s": round(n_tok / dt, 1), "sentences_per_s": round(len(sents) / dt, 2)}
    if device.type == "cuda":
        out["peak_device_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _accuracy(got: list[torch.Tensor], want: list[torch.Tensor], mask: torch.Tensor) -> dict:
    got = [g.float().cpu() for g in got]
    cos = [torch.nn.functional.cosine_similarity(a[mask], b[mask], dim=-1) for a, b in zip(got, want)]
    return {
        "max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(got, want)),
        "cosine_mean": min(float(c.mean()) for c in cos),
        "cosine_min": min(float(c.min()) for c in cos),
    }


def _measure(a: argparse.Namespace, name: str, device: torch.device) -> list[dict]:
    plain_cpu = _model(name)
    sents = sorted(_sentences(a.sentences, a.seed), key=len)
    check = _sentences(a.accuracy_limit, a.seed + 1)
    check_ids = batch_to_char_ids(check)
    with torch.no_grad():
        want = plain_cpu(check_ids)
    rows = []
    on_device = copy.deepcopy(plain_cpu).to(device)
    systems = [("plain", "float32")] + [("fast", d) for d in a.dtypes]
    for engine, dtype in systems:
        precision = "float32" if dtype.startswith("float32") else dtype
        with _tf32(dtype == "float32-tf32"):
            run = on_device if engine == "plain" else FastBiLM(on_device, precision)
            with torch.no_grad():
                got = run(check_ids)
            accuracy = _accuracy(got.layers, want.layers, want.mask)
            for bs in a.batch_sizes:
                if engine == "fast":
                    run.cache.clear()
                row = {"model": name, "engine": engine, "dtype": dtype, "batch_size": bs}
                row.update(_speed(run, sents, bs, device), **accuracy)
                print(json.dumps(row), flush=True)
                rows.append(row)
            if a.profile and engine == "fast":
                _profile(run, sents, max(a.batch_sizes), device, f"{name} fast {dtype}")
    return rows


def _profile(run, sents: list[list[str]], batch_size: int, device: torch.device, title: str) -> None:
    """Print where one batch of the longest sentences spends its time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    ids = batch_to_char_ids(sents[-batch_size:])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad():
        run(ids)
        _sync(device)
        with profile(activities=activities) as prof:
            run(ids)
            _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile: {title}, one batch of {len(ids)} of the longest sentences", flush=True)
    print(prof.key_averages().table(sort_by=key, row_limit=15), flush=True)


def _table(rows: list[dict]) -> str:
    lines = [
        "| model | system | batch | tokens/s | sentences/s | peak device MB | max abs diff vs CPU fp32 "
        "| cosine mean / min (worst layer) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        system = "plain fp32" if r["engine"] == "plain" else f"fast {r['dtype']}"
        lines.append(
            f"| {r['model']} | {system} | {r['batch_size']} | {r['tokens_per_s']} | {r['sentences_per_s']} "
            f"| {r.get('peak_device_mb', '')} | {r['max_abs_diff']:.1e} "
            f"| {r['cosine_mean']:.6f} / {r['cosine_min']:.6f} |"
        )
    return "\n".join(lines)


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        cuda = torch.version.cuda
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {cuda}"
    return f"{platform.processor() or platform.machine()} ({device}), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=["default", "original"], choices=["default", "original"])
    p.add_argument("--sentences", type=int, default=600)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=DTYPES)
    p.add_argument("--accuracy-limit", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="print a profile of one batch per fast system")
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: --device cuda, but CUDA is not available", file=sys.stderr)
        return 1
    rows = [r for name in a.models for r in _measure(a, name, device)]
    table = _table(rows)
    print(table)
    if a.append:
        args = " ".join(sys.argv[1:] if argv is None else argv)
        text = (
            f"\n### The fast engine on {device.type.upper()} ({time.strftime('%Y-%m-%d')})\n\n"
            f"Device: {_device_text(device)}. {a.sentences} synthetic sentences sorted by length, "
            "all three layers, stateless; accuracy on other sentences, against the plain model "
            "on the CPU in float32 (TF32 off unless the row says tf32).\n\n"
            f"    PYTHONPATH=src python benchmarks/bench_gpu.py {args}\n\n{table}\n"
        )
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
