"""``benchmarks/bench_gpu.py`` on the CPU (its logic; the figures come from a GPU)."""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_runs_and_reports_accuracy_against_the_cpu_reference(capsys) -> None:
    bench = load_benchmark("bench_gpu")
    args = ["--device", "cpu", "--models", "default", "--sentences", "12", "--batch-sizes", "8"]
    assert bench.main([*args, "--dtypes", "float32", "--accuracy-limit", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["engine"], r["dtype"]) for r in rows] == [("plain", "float32"), ("fast", "float32")]
    assert rows[0]["max_abs_diff"] == 0.0  # the plain model on the CPU is the reference itself
    assert rows[1]["max_abs_diff"] <= 1e-5 and rows[1]["cosine_min"] > 0.99999
    assert all(r["tokens_per_s"] > 0 for r in rows)


def test_synthetic_inputs_are_seeded_and_the_original_size_model_is_scaled() -> None:
    bench = load_benchmark("bench_gpu")
    a, b = bench._sentences(20, 3), bench._sentences(20, 3)
    assert a == b and all(5 <= len(s) <= 60 for s in a) and a != bench._sentences(20, 4)
    config = bench.ElmoConfig.from_dict(bench.ORIGINAL)
    assert (config.lstm.dim, config.lstm.projection_dim, config.char_cnn.n_filters) == (4096, 512, 2048)
    kernel = bench._random_original(1).forward_layers[0].kernel.detach()
    assert abs(float(kernel.std()) - kernel.shape[0] ** -0.5) < 1e-3
