"""The CPU-dependent figures behind the test suite's tolerances, on this machine's kernels.

Every comparison the tests make whose result depends on how the CPU's kernels round
(oneDNN, MKL and ATen's vectorized code pick different kernels on AVX2, AVX-512 and AMX
CPUs) is measured here, on exactly the inputs the tests use, and printed as one JSON
object (``--json FILE`` also writes it). Run it once per CPU kind; on a newer CPU, an
older kind's kernels are reproduced by restricting the libraries::

    # AVX2 only (AMD EPYC Zen 2/3 and older Xeons)
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/numerics.py --label avx2
    # AVX-512 without bfloat16 units, VNNI or AMX
    ONEDNN_MAX_CPU_ISA=AVX512_CORE ATEN_CPU_CAPABILITY=avx512 MKL_ENABLE_INSTRUCTIONS=AVX512 \
        python benchmarks/numerics.py --label avx512-core
    python benchmarks/numerics.py --label native

int8 products run in fbgemm, which none of these variables restrict: its figures are
those of the CPU the script runs on.

The random models come from :mod:`elmo.testing` (cached in ``.models/`` as the tests
cache them); the reference outputs from ``../shared/fixtures``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

import elmo
from elmo.chars import batch_to_char_ids
from elmo.engine import FastBiLM
from elmo.testing import write_random_model

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "fixtures" / "reference"
ALLENNLP = SHARED / "fixtures" / "allennlp-elmo"
MODELS = Path(os.environ.get("ELMO_TEST_MODELS", ROOT / ".models"))
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def random_model(size: str, seed: int, gain: int) -> Path:
    out = MODELS / f"{size}_seed{seed}_gain{gain}"
    if not (out / "weights.hdf5").is_file():
        write_random_model(out, size, seed, gain)  # type: ignore[arg-type]
    return out


def reference_sentences() -> list[list[str]]:
    text = (REFERENCE / "sentences.txt").read_text(encoding="utf-8")
    return [line.split() for line in text.split("\n") if line.split()]


def edge_batch() -> list[list[str]]:
    """The batch of ``tests/test_fast.py``: odd lengths, empty sentences, long tokens, repeats."""
    s = reference_sentences()
    return [s[30], [], s[1], ["a"], s[13], [], ["x" * 70, "the", "the"], s[3], s[0][:7], s[11]]


def _layer_figures(got: list[torch.Tensor], want: list[torch.Tensor]) -> list[dict]:
    """Per layer: max abs difference, max |reference|, and the two relative errors."""
    rows = []
    for a, b in zip(got, want):
        diff = (a.double() - b.double()).abs()
        rows.append(
            {
                "max_abs": float(diff.max()),
                "max_ref": float(b.abs().max()),
                "max_rel": float(diff.max() / b.abs().max()),
                "norm_rel": float(diff.norm() / b.double().norm()),
            }
        )
    return rows


def fast_vs_plain(*model: Path) -> dict:
    """``test_fast``: the fast engine against the plain model on the edge batch, zero state."""
    bilm = elmo.load(*model, engine="plain").bilm
    ids = batch_to_char_ids(edge_batch())
    with torch.no_grad():
        want = bilm(ids)
    got = FastBiLM(bilm)(ids)
    state = max(
        float((x - y).abs().max())
        for s, t in zip(got.state, want.state)
        for x, y in zip(vars(s).values(), vars(t).values())
    )
    return {"layers": _layer_figures(got.layers, want.layers), "state_max_abs": state}


def _stack(out: dict, row: int, n: int) -> np.ndarray:
    word = out["word_emb"][row, :n]
    layers = [torch.cat([word, word], -1), out["lstm_outputs1"][row, :n], out["lstm_outputs2"][row, :n]]
    return np.stack([x.numpy() for x in layers])


def reference_parity(model_dir: Path, reference: Path, engine: str) -> dict:
    """``test_parity``: every layer of the 42 sentences, alone and in stateful batches of 4."""
    sentences = reference_sentences()
    m = elmo.load(model_dir, engine=engine)
    ours: dict[str, list[np.ndarray]] = {"stateless": [], "stateful": []}
    with torch.no_grad():
        for s in sentences:
            ours["stateless"].append(_stack(m(tokens=[s]), 0, len(s)))
        m.stateful = True
        m.reset_state()
        for b in range(0, len(sentences), 4):
            batch = sentences[b : b + 4]
            out = m(tokens=batch)
            ours["stateful"].extend(_stack(out, j, len(s)) for j, s in enumerate(batch))
    figures = {}
    with h5py.File(reference, "r") as ref:
        for mode, outputs in ours.items():
            worst = rel = excess = 0.0
            for i, got in enumerate(outputs):
                want = ref[f"{mode}/{i}"][()]
                diff = np.abs(got.astype(np.float64) - want)
                worst = max(worst, float(diff.max()))
                rel = max(rel, float(np.linalg.norm(diff) / np.linalg.norm(want)))
                # what allclose(rtol=1e-5) leaves for the absolute term
                excess = max(excess, float((diff - 1e-5 * np.abs(want)).max()))
            figures[mode] = {"max_abs": worst, "norm_rel": rel, "atol_needed_at_rtol_1e-5": excess}
    return figures


def allennlp_stateful_fixture() -> float:
    """``test_parity``: AllenNLP's ten stateful batches of its tiny model (top layer)."""
    m = elmo.load(ALLENNLP / "options.json", ALLENNLP / "lm_weights.hdf5", stateful=True)
    sentences = json.loads((ALLENNLP / "sentences.json").read_text(encoding="utf-8"))
    files = [h5py.File(ALLENNLP / f"lm_embeddings_{k}.hdf5", "r") for k in range(3)]
    worst = 0.0
    with torch.no_grad():
        for i in range(10):
            batch = [sentences[k][i] for k in range(3)]
            out = m(batch)
            for k, sentence in enumerate(batch):
                n = len(sentence.split())
                want = np.concatenate(list(files[k][str(i)][()]), axis=-1)
                worst = max(worst, float(np.abs(out["lstm_outputs2"][k, :n].numpy() - want).max()))
    return worst


def batch_independence(model_dir: Path) -> float:
    """``test_fast``: a sentence alone against the same sentence inside a batch (no cache)."""
    bilm = elmo.load(model_dir, engine="plain").bilm
    fast = FastBiLM(bilm, cache_size=0)
    sentences = reference_sentences()
    worst = 0.0
    for target in (0, 1, 13, 30):
        batch = [sentences[30], sentences[1], sentences[target], sentences[11], *sentences[3:9]]
        alone = fast(batch_to_char_ids([sentences[target]]))
        inside = fast(batch_to_char_ids(batch))
        n = len(sentences[target])
        for a, b in zip(alone.layers, inside.layers):
            worst = max(worst, float((a[0, :n] - b[2, :n]).abs().max()))
    return worst


def lower_precision(model_dir: Path, precision: str) -> dict:
    """``test_fast``: per-token cosine with float32 on every layer, 42 reference sentences."""
    bilm = elmo.load(model_dir, engine="plain").bilm
    ids = batch_to_char_ids(reference_sentences())
    want = FastBiLM(bilm)(ids)
    got = FastBiLM(bilm, precision)(ids)
    cos = [
        torch.nn.functional.cosine_similarity(a[want.mask], b[want.mask], dim=-1)
        for a, b in zip(got.layers, want.layers)
    ]
    return {"mean": min(float(c.mean()) for c in cos), "min": min(float(c.min()) for c in cos)}


def int8_seven_bit(model_dir: Path) -> dict:
    """int8 as CPUs without VNNI run it: activations quantized to 7 bits (see
    ``elmo.engine.precision``). fbgemm picks its kernels by the CPU's own flags, so this is
    how an AVX2-only CPU's int8 accuracy is reproduced on a newer one."""
    from elmo.engine import precision

    saved = precision._reduce_range
    precision._reduce_range = lambda: True  # type: ignore[assignment]
    try:
        return lower_precision(model_dir, "int8")
    finally:
        precision._reduce_range = saved


def embed_run_to_run(model_dir: Path, workdir: Path) -> float:
    """``test_cli``'s resume comparison: two separate ``elmo embed`` runs of the fast engine on
    the same input (336 lines, batch 8, top layer); the largest difference between them."""
    lines = [" ".join(s) for s in reference_sentences()] * 8
    source = workdir / "in.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    outputs = []
    for k in range(2):
        out = workdir / f"out{k}.hdf5"
        args = ["--model", str(model_dir), "--batch-size", "8", "--shard-size", "32", "--layers", "top"]
        cmd = [sys.executable, "-m", "elmo", "embed", str(source), str(out), *args, "--quiet", "--overwrite"]
        subprocess.run(cmd, check=True)
        with h5py.File(out, "r") as f:
            outputs.append({key: f[key][()] for key in f if key != "sentence_to_index"})
    return max(float(np.abs(outputs[0][key] - outputs[1][key]).max(initial=0.0)) for key in outputs[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="native", help="name of the CPU kind measured")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-original", action="store_true", help="leave out the original-size models")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore", message="dtype='bfloat16'")
    small = random_model("small", 1, 1)
    result: dict = {
        "label": args.label,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "restriction": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ},
        "threads": args.threads,
        "fast_vs_plain": {
            "tiny": fast_vs_plain(ALLENNLP / "options.json", ALLENNLP / "lm_weights.hdf5"),
            "small_gain1": fast_vs_plain(small),
        },
        "batch_independence_small": batch_independence(small),
        "parity": {
            "allennlp_stateful_fixture": allennlp_stateful_fixture(),
            "small_gain1": {
                e: reference_parity(small, REFERENCE / "small_seed1_gain1.hdf5", e) for e in ("plain", "fast")
            },
        },
        "lower_precision_small": {p: lower_precision(small, p) for p in ("bfloat16", "int8")},
    }
    result["lower_precision_small"]["int8_7bit"] = int8_seven_bit(small)
    with tempfile.TemporaryDirectory() as tmp:
        result["embed_run_to_run_small"] = embed_run_to_run(small, Path(tmp))
    if not args.skip_original:
        for gain in (1, 2):
            result["fast_vs_plain"][f"original_gain{gain}"] = fast_vs_plain(random_model("original", 1, gain))
        original = random_model("original", 1, 2)
        result["parity"]["original_gain2"] = {
            e: reference_parity(original, REFERENCE / "original_seed1_gain2.hdf5", e)
            for e in ("plain", "fast")
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
