"""Inference speed, accuracy and memory of this project's engines, and AllenNLP's, in one run.

    python benchmarks/bench_inference.py --peer PEER_VENV/bin/python \\
        [--sizes small original] [--limit 300] [--batch-size 64] [--threads 2] \\
        [--dtypes float32 bfloat16 int8] [--repeat 3] [--sweep] [--profile] [--append]

Side by side (always): same weights (``make_random_elmo.py --seed 1 --gain 1``), same
sentences (the first ``--limit`` lines of ``make_sentences.py --n 2000 --seed 0``), same
thread count, same length bucketing (sentences sorted by length, batches of
``--batch-size``), all three layers, stateless. Systems: the plain reference model, the
fast engine in each of ``--dtypes``, and AllenNLP (``--peer``, run through
``../shared/tools/peer/bench_allennlp.py --sort`` in its own virtual environment, made by
``../shared/tools/peer/setup_peer.sh``). Each measurement runs in a fresh process, so
peak RSS (``ru_maxrss``, model loading included) is comparable, and the fast engine's
token cache starts empty (it fills during the timed loop: tokens repeat). Accuracy is
measured in another process on the first ``--accuracy-limit`` sentences: float32 as the
largest absolute difference from the plain model, bfloat16 and int8 as per-token cosine
similarity with float32 (mean and minimum over tokens, worst layer).

``--sweep``: tokens/s of the fast engine (``--sweep-engines``) against batch size and
against sentence length, cache emptied before each point.

``--repeat N``: the fast engine's and AllenNLP's speed runs are made N times, the systems
taking turns round after round (a shared machine's load changes over minutes); the main
table shows each system's median run, and a second table every run with each round's
ratio to AllenNLP.

``--batch-compare N ...``: the fast engine (float32) and AllenNLP side by side again at
other batch sizes, on the same sentences, so that each can be compared at its best.

``--profile``: where the fast engine's time goes (``torch.profiler`` self time by kind
of operation, and the rest: Python), the nominal model GFLOP/s (see
``elmo.engine.flops``), and the peak of a large matrix product measured in the same
precision on this machine.

Prints one JSON line per measurement and Markdown tables; ``--append`` adds the tables,
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
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT.parent / "shared" / "tools"
CACHE = ROOT / ".models"
ALL_DTYPES = ("float32", "bfloat16", "int8")


# ---------------------------------------------------------------------------- inputs
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


def _read(path: str) -> list[list[str]]:
    return [line.split() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.split()]


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _label(engine: str, dtype: str) -> str:
    return "elmo-embeddings (plain fp32)" if engine == "plain" else f"elmo-embeddings (fast {dtype})"


# ---------------------------------------------------------------------------- workers
def _load(a: argparse.Namespace, engine: str, dtype: str = "float32"):
    import elmo

    return elmo.load(a.model, engine=engine, precision=dtype)


def _timed_loop(m, sents: list[list[str]], batch_size: int) -> float:
    import torch

    with torch.no_grad():
        t0 = time.perf_counter()
        for s in range(0, len(sents), batch_size):
            m(tokens=sents[s : s + batch_size])
        return time.perf_counter() - t0


def _work_speed(a: argparse.Namespace) -> dict:
    """tokens/s of one engine and precision over the sorted sentences, in this fresh process."""
    import torch

    sents = sorted(_read(a.sentences), key=len)
    m = _load(a, a.engine, a.dtype)
    with torch.no_grad():
        m(tokens=sents[:2])  # warm-up, as the peer does
    n_tok = sum(map(len, sents))
    dt = _timed_loop(m, sents, a.batch_size)
    out = {
        "system": _label(a.engine, a.dtype),
        "engine": a.engine,
        "dtype": a.dtype,
        "sentences": len(sents),
        "tokens": n_tok,
        "seconds": round(dt, 3),
        "tokens_per_s": round(n_tok / dt, 1),
        "sentences_per_s": round(len(sents) / dt, 2),
        "batch_size": a.batch_size,
        "threads": a.threads,
        "peak_rss_mb": _rss_mb(),
    }
    if m.fast is not None and a.engine != "plain":
        # Share of token occurrences whose representation was not computed (repeated within
        # a batch, or found in the cache).
        out["tokens_not_encoded"] = round(1 - m.fast.cache.misses / max(1, m.fast.tokens_seen), 3)
    return out


def _work_accuracy(a: argparse.Namespace) -> dict:
    """float32: max |fast - plain|; bfloat16 / int8: per-token cosine with fast float32."""
    import torch

    from elmo.chars import batch_to_char_ids

    sents = _read(a.sentences)[: a.accuracy_limit]
    plain = _load(a, "plain")
    ids = batch_to_char_ids(sents)
    bilm = plain.bilm
    from elmo.engine import FastBiLM

    with torch.no_grad():
        want = bilm(ids) if a.dtype == "float32" else FastBiLM(bilm, "float32")(ids)
    got = FastBiLM(bilm, a.dtype)(ids)
    mask = want.mask
    result: dict = {"dtype": a.dtype, "sentences": len(sents), "tokens": int(mask.sum())}
    result["max_abs_diff"] = [float((x - y).abs().max()) for x, y in zip(got.layers, want.layers)]
    if a.dtype != "float32":
        cos = [
            torch.nn.functional.cosine_similarity(x[mask], y[mask], dim=-1)
            for x, y in zip(got.layers, want.layers)
        ]
        result["cosine_mean"] = [float(c.mean()) for c in cos]
        result["cosine_min"] = [float(c.min()) for c in cos]
    return result


def _sweep_sentences(pool: list[str], length: int, tokens: int) -> list[list[str]]:
    """Sentences of exactly ``length`` tokens cut from the benchmark text, ``tokens`` in all."""
    out, k = [], 0
    for _ in range(max(1, tokens // length)):
        out.append([pool[(k + i) % len(pool)] for i in range(length)])
        k += length
    return out


def _work_sweep(a: argparse.Namespace) -> dict:
    """tokens/s against batch size (benchmark sentences) and sentence length (batch 64)."""
    import torch

    sents = sorted(_read(a.sentences), key=len)
    pool = [t for s in _read(a.sentences) for t in s]
    rows = []
    for engine in a.sweep_engines:
        m = _load(a, engine)
        with torch.no_grad():
            m(tokens=sents[:2])

        def point(batch: list[list[str]], batch_size: int, m=m) -> float:
            if m.fast is not None:
                m.fast.cache.clear()
            n_tok = sum(map(len, batch))
            return round(n_tok / _timed_loop(m, batch, batch_size), 1)

        # The same token budget for every point: about a second of the fast engine.
        budget = a.sweep_tokens
        subset, n = [], 0
        for s in sents[:: max(1, len(sents) // 64)]:
            subset.append(s)
            n += len(s)
            if n >= budget:
                break
        subset.sort(key=len)
        for bs in a.sweep_batch_sizes:
            rows.append(
                {"engine": engine, "axis": "batch_size", "value": bs, "tokens_per_s": point(subset, bs)}
            )
        for length in a.sweep_lengths:
            # At least 64 sentences, so that every length fills a batch of 64 rows.
            batch = _sweep_sentences(pool, length, max(budget, 64 * length))
            rows.append(
                {
                    "engine": engine,
                    "axis": "sentence_length",
                    "value": length,
                    "tokens_per_s": point(batch, 64),
                }
            )
    return {"sweep": rows}


_KINDS = {
    "matmul": (
        "aten::mm",
        "aten::bmm",
        "aten::addmm",
        "aten::baddbmm",
        "quantized::linear_dynamic",
        "mkldnn::_linear_pointwise",
    ),
    "elementwise": (
        "aten::sigmoid_",
        "aten::tanh_",
        "aten::tanh",
        "aten::mul_",
        "aten::mul",
        "aten::add_",
        "aten::add",
        "aten::addcmul_",
        "aten::clamp_",
        "aten::relu_",
        "aten::neg_",
        "aten::sub_",
        "aten::clamp_min_",
        "aten::sigmoid",
    ),
    "copy / gather / convert": (
        "aten::copy_",
        "aten::index_select",
        "aten::cat",
        "aten::index",
        "aten::index_put_",
        "aten::_index_put_impl_",
        "aten::gather",
        "aten::embedding",
        "aten::_to_copy",
        "aten::where",
        "aten::scatter_",
        "aten::zeros",
        "aten::fill_",
        "aten::zero_",
    ),
    "reductions": ("aten::amax", "aten::sum", "aten::any", "aten::_unique2", "aten::unique_dim"),
}


def _matmul_peak(dtype: str, threads: int) -> float:
    """GFLOP/s of the best of a few large products in ``dtype`` (int8: dynamic quantized).

    float32 and bfloat16: the better of ``torch.mm`` (the BLAS that AllenNLP's products
    use) and the engine's own product (:class:`elmo.engine.precision.Linear`: oneDNN on
    CPUs that have it), so that the fraction of the peak is not flattered by a slow BLAS.
    """
    import torch

    from elmo.engine.precision import Linear

    torch.set_num_threads(threads)
    m, k, n = 1024, 1024, 4096
    runs = []
    if dtype == "int8":
        lin = Linear(torch.randn(k, n) * 0.05, None, "int8")
        x = torch.randn(m, k)
        runs.append(lambda: lin(x))
    else:
        dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        x, w = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
        lin = Linear(w.float(), None, dtype)
        runs += [lambda: torch.mm(x, w), lambda: lin(x)]
    best = float("inf")
    for run in runs:
        run()
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(5):
                run()
            best = min(best, (time.perf_counter() - t0) / 5)
    return 2 * m * k * n / best / 1e9


def _work_profile(a: argparse.Namespace) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from elmo.engine.flops import model_flops
    from elmo.engine.precision import count_flops

    sents = sorted(_read(a.sentences), key=len)
    m = _load(a, "fast", a.dtype)
    with torch.no_grad():
        m(tokens=sents[:2])
    n_tok = sum(map(len, sents))
    # Speed from an unprofiled run (the profiler slows every operation down), shares from a
    # profiled one; both start with an empty token cache.
    wall_plain = _timed_loop(m, sents, a.batch_size)
    m.fast.cache.clear()
    with count_flops() as counter, profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = _timed_loop(m, sents, a.batch_size)
    executed = counter.flops
    kinds = dict.fromkeys([*_KINDS, "other ops"], 0.0)
    for ev in prof.key_averages():
        kind = next((k for k, names in _KINDS.items() if ev.key in names), "other ops")
        kinds[kind] += ev.self_cpu_time_total / 1e6
    in_ops = sum(kinds.values())
    kinds["Python and dispatch (wall - ops)"] = max(0.0, wall - in_ops)
    flops = model_flops(m.config)["total"]
    tokens_per_s = n_tok / wall_plain
    peak = _matmul_peak(a.dtype, a.threads)
    matmul_s = kinds["matmul"]
    return {
        "dtype": a.dtype,
        "tokens": n_tok,
        "wall_s_profiled": round(wall, 3),
        "wall_s_unprofiled": round(wall_plain, 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "share": {k: round(v / wall, 3) for k, v in kinds.items()},
        "model_gflop_per_token": round(flops / 1e9, 4),
        "model_gflop_s": round(flops * tokens_per_s / 1e9, 1),
        # What the products really computed (cache, sharing and padding accounted for).
        "executed_gflop_per_token": round(executed / n_tok / 1e9, 4),
        "executed_gflop_s": round(executed / wall_plain / 1e9, 1),
        "in_products_gflop_s": round(executed / max(matmul_s, 1e-9) / 1e9, 1),
        "matmul_peak_gflop_s": round(peak, 1),
        "fraction_of_peak": round(executed / wall_plain / 1e9 / peak, 3),
        "in_products_fraction_of_peak": round(executed / max(matmul_s, 1e-9) / 1e9 / peak, 3),
    }


def _worker(a: argparse.Namespace) -> None:
    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    work = {"speed": _work_speed, "accuracy": _work_accuracy, "sweep": _work_sweep, "profile": _work_profile}
    print(json.dumps(work[a.worker](a)))


# ---------------------------------------------------------------------------- driver
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


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni")
                return " ".join(f for f in wanted if f in flags) or "no AVX2"
    except OSError:
        pass
    return "unknown"


def _accuracy_cell(acc: dict | None) -> str:
    if acc is None:
        return ""
    if "cosine_mean" in acc:
        return f"cos mean {min(acc['cosine_mean']):.6f}, min {min(acc['cosine_min']):.6f}"
    return f"max abs diff {max(acc['max_abs_diff']):.1e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer", help="python of the AllenNLP virtual environment (setup_peer.sh)")
    p.add_argument("--sizes", nargs="+", default=["small", "original"], choices=["small", "original"])
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", nargs="+", default=list(ALL_DTYPES), choices=ALL_DTYPES)
    p.add_argument("--no-plain", action="store_true", help="skip the plain model's speed row")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of the fast engine's and AllenNLP's speed runs, in turn; the table shows each "
        "system's median run, and a second table every run",
    )
    p.add_argument("--accuracy-limit", type=int, default=64)
    p.add_argument("--sweep", action="store_true", help="tokens/s against batch size and sentence length")
    p.add_argument("--sweep-engines", nargs="+", default=["fast"], choices=["fast", "plain"])
    p.add_argument("--sweep-batch-sizes", nargs="+", type=int, default=[1, 8, 32, 64, 128])
    p.add_argument("--sweep-lengths", nargs="+", type=int, default=[5, 20, 60, 200])
    p.add_argument("--sweep-tokens", type=int, default=1500)
    p.add_argument(
        "--batch-compare",
        nargs="+",
        type=int,
        default=[],
        help="more batch sizes at which to compare fast float32 with AllenNLP (needs --peer)",
    )
    p.add_argument(
        "--profile", action="store_true", help="where the fast engine's time goes; GFLOP/s vs peak"
    )
    p.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    p.add_argument("--worker", choices=["speed", "accuracy", "sweep", "profile"], help=argparse.SUPPRESS)
    p.add_argument("--engine", default="fast", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--sentences", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        _worker(a)
        return
    sentences = CACHE / f"bench_sentences_{a.limit}.txt"
    sentences.parent.mkdir(exist_ok=True)
    _sentences(sentences, a.limit)

    def worker(kind: str, size: str, model: Path, common: list[str], **extra: object) -> dict:
        cmd = [sys.executable, __file__, "--worker", kind, "--model", str(model), *common]
        for key, value in extra.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        if kind == "sweep":
            cmd += ["--sweep-engines", *a.sweep_engines, "--sweep-batch-sizes"]
            cmd += [str(b) for b in a.sweep_batch_sizes] + ["--sweep-lengths"]
            cmd += [str(n) for n in a.sweep_lengths] + ["--sweep-tokens", str(a.sweep_tokens)]
        r = _run_json(cmd, a.threads)
        print(json.dumps({"model": size, "measure": kind, **r}))
        return r

    lines = [
        f"### Inference, side by side ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {_cpu()} ({_cpu_flags()}), {os.cpu_count()} cores, torch threads {a.threads}; "
        f"batch {a.batch_size}, sentences sorted by length, {a.limit} sentences, all three layers, "
        "stateless, fresh process per row.",
        "",
        "    " + " ".join(["python benchmarks/bench_inference.py", *_cmd_args(a)]),
        "",
        "| model | system | tokens/s | sentences/s | peak RSS MB | speed vs AllenNLP | "
        "tokens not re-encoded | accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    extra_tables: list[str] = []
    for size in a.sizes:
        model = _model(size)

        def run_args(batch_size: int) -> list[str]:
            """The arguments every system gets: the sentences, the batch size, the threads."""
            return [
                "--sentences",
                str(sentences),
                "--batch-size",
                str(batch_size),
                "--threads",
                str(a.threads),
            ]

        common = run_args(a.batch_size)

        def allennlp(common: list[str], model: Path = model, size: str = size) -> dict:
            peer_cmd = [a.peer, str(TOOLS / "peer" / "bench_allennlp.py"), "--options"]
            peer_cmd += [str(model / "options.json"), "--weights", str(model / "weights.hdf5")]
            r = _run_json([*peer_cmd, *common, "--sort"], a.threads)
            print(json.dumps({"model": size, "measure": "speed", **r}))
            return r

        # Speed: the fast engine in each precision and AllenNLP take turns, round after
        # round, so that a change in the machine's load hits them alike.
        runs: dict[str, list[dict]] = {d: [] for d in a.dtypes}
        if a.peer:
            runs["allennlp"] = []
        for _ in range(a.repeat):
            for dtype in a.dtypes:
                runs[dtype].append(worker("speed", size, model, common, engine="fast", dtype=dtype))
            if a.peer:
                runs["allennlp"].append(allennlp(common))
        rows = []
        if not a.no_plain:
            rows.append((worker("speed", size, model, common, engine="plain"), None))
        for dtype in a.dtypes:
            acc = worker("accuracy", size, model, common, dtype=dtype, accuracy_limit=a.accuracy_limit)
            rows.append((_median_run(runs[dtype]), acc))
        peer = None
        if a.peer:
            peer = _median_run(runs["allennlp"])
            rows.append((peer, None))
        for r, acc in rows:
            ratio = f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x" if peer else "n/a"
            hits = f"{r['tokens_not_encoded']:.0%}" if "tokens_not_encoded" in r else ""
            lines.append(
                f"| {size} | {r['system']} | {r['tokens_per_s']} | {r['sentences_per_s']} | "
                f"{r['peak_rss_mb']} | {ratio} | {hits} | {_accuracy_cell(acc)} |"
            )
        if a.repeat > 1:
            extra_tables += _runs_table(size, runs)
        if a.peer and a.batch_compare:
            points = []
            if "float32" in a.dtypes:
                points.append((a.batch_size, _median_run(runs["float32"]), peer))
            for bs in a.batch_compare:
                at = run_args(bs)
                points.append(
                    (bs, worker("speed", size, model, at, engine="fast", dtype="float32"), allennlp(at))
                )
            extra_tables += _batch_compare_table(size, points)
        if a.sweep:
            sweep = worker("sweep", size, model, common)["sweep"]
            extra_tables += _sweep_table(size, sweep)
        if a.profile:
            extra_tables += _profile_table(
                size, [worker("profile", size, model, common, dtype=d) for d in a.dtypes]
            )
    lines += [
        "",
        "Accuracy: fast float32 against the plain model (largest absolute difference, all layers); "
        "bfloat16 and int8 against fast float32 (per-token cosine similarity, worst layer), "
        f"first {a.accuracy_limit} sentences. Tokens not re-encoded: the share of token occurrences "
        "whose char CNN + highway + projection the fast engine did not compute (a repeat within the "
        "batch, or found in its token cache, which starts empty).",
    ]
    table = "\n".join(lines + extra_tables) + "\n"
    print(table)
    if a.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + table)


def _cmd_args(a: argparse.Namespace) -> list[str]:
    args = []
    if a.peer:
        args.append("--peer PEER_VENV/bin/python")
    args += [f"--sizes {' '.join(a.sizes)}", f"--limit {a.limit}", f"--batch-size {a.batch_size}"]
    args += [f"--threads {a.threads}", f"--dtypes {' '.join(a.dtypes)}"]
    if a.no_plain:
        args.append("--no-plain")
    if a.repeat > 1:
        args.append(f"--repeat {a.repeat}")
    if a.batch_compare:
        args.append(f"--batch-compare {' '.join(map(str, a.batch_compare))}")
    args += [flag for flag, on in (("--sweep", a.sweep), ("--profile", a.profile)) if on]
    return args


def _median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def _runs_table(size: str, runs: dict[str, list[dict]]) -> list[str]:
    """Every speed run of each system, and each round's ratio to AllenNLP's run of that round."""
    n = len(next(iter(runs.values())))
    out = ["", f"Every speed run, {size} model, in the order run (each round: the systems in turn):", ""]
    out += ["| system | " + " | ".join(f"round {k + 1}" for k in range(n)) + " | median |"]
    out += ["|---|" + "---|" * (n + 1)]
    peer = runs.get("allennlp")
    for name, system_runs in runs.items():
        cells = []
        for k, r in enumerate(system_runs):
            cell = f"{r['tokens_per_s']}"
            if peer is not None and name != "allennlp":
                cell += f" ({r['tokens_per_s'] / peer[k]['tokens_per_s']:.2f}x)"
            cells.append(cell)
        label = system_runs[0]["system"]
        out.append(f"| {label} | " + " | ".join(cells) + f" | {_median_run(system_runs)['tokens_per_s']} |")
    if peer is not None:
        out += ["", "(in parentheses: against AllenNLP's run of the same round)"]
    return out


def _batch_compare_table(size: str, points: list[tuple[int, dict, dict]]) -> list[str]:
    out = ["", f"Fast float32 and AllenNLP at several batch sizes, {size} model, same sentences:", ""]
    out += ["| batch size | fast fp32 tokens/s | AllenNLP tokens/s | ratio |", "|---|---|---|---|"]
    for bs, ours, peer in sorted(points, key=lambda p: p[0]):
        ratio = ours["tokens_per_s"] / peer["tokens_per_s"]
        out.append(f"| {bs} | {ours['tokens_per_s']} | {peer['tokens_per_s']} | {ratio:.2f}x |")
    best_ours = max(p[1]["tokens_per_s"] for p in points)
    best_peer = max(p[2]["tokens_per_s"] for p in points)
    out.append(f"| best of each | {best_ours} | {best_peer} | {best_ours / best_peer:.2f}x |")
    return out


def _sweep_table(size: str, sweep: list[dict]) -> list[str]:
    out = []
    for axis, title in (("batch_size", "batch size"), ("sentence_length", "sentence length (batch 64)")):
        pts = [r for r in sweep if r["axis"] == axis]
        values = sorted({r["value"] for r in pts})
        out += ["", f"Tokens/s against {title}, {size} model, token cache emptied before each point:", ""]
        out += ["| engine | " + " | ".join(str(v) for v in values) + " |", "|---" * (len(values) + 1) + "|"]
        for engine in sorted({r["engine"] for r in pts}):
            cells = {r["value"]: r["tokens_per_s"] for r in pts if r["engine"] == engine}
            out.append(f"| {engine} fp32 | " + " | ".join(str(cells.get(v, "")) for v in values) + " |")
    return out


def _profile_table(size: str, profiles: list[dict]) -> list[str]:
    kinds = list(profiles[0]["share"])
    out = [
        "",
        f"Where the fast engine's time goes, {size} model: shares of the profiled wall time (cache "
        "empty at the start). GFLOP/s: nominal (the model's FLOPs per token, "
        "`elmo.engine.flops`, times tokens/s), executed (the products the engine really ran: "
        "the cache and shared tokens save work, padding rows add some) per second of wall time and "
        "per second spent in products, against the peak of one large product in the same "
        "precision measured here:",
        "",
        "| precision | "
        + " | ".join(kinds)
        + " | nominal GFLOP/s | executed GFLOP/tok | executed GFLOP/s | in products | peak | "
        "fraction of peak (wall / in products) |",
        "|---" * (len(kinds) + 7) + "|",
    ]
    for pr in profiles:
        shares = " | ".join(f"{pr['share'][k]:.0%}" for k in kinds)
        out.append(
            f"| {pr['dtype']} | {shares} | {pr['model_gflop_s']} | {pr['executed_gflop_per_token']} | "
            f"{pr['executed_gflop_s']} | {pr['in_products_gflop_s']} | {pr['matmul_peak_gflop_s']} | "
            f"{pr['fraction_of_peak']:.0%} / {pr['in_products_fraction_of_peak']:.0%} |"
        )
    return out


if __name__ == "__main__":
    main()
