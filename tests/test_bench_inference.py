"""``benchmarks/bench_inference.py``: the logic that turns runs into the reported figures."""

from __future__ import annotations

from conftest import load_benchmark


def _run(system: str, tokens_per_s: float) -> dict:
    return {"system": system, "tokens_per_s": tokens_per_s}


def test_median_run_is_the_middle_one():
    bench = load_benchmark("bench_inference")
    runs = [_run("a", 3.0), _run("a", 1.0), _run("a", 2.0)]
    assert bench._median_run(runs) is runs[2]
    assert bench._median_run(runs[:2])["tokens_per_s"] == 1.0  # even count: the lower middle
    assert bench._median_run(runs[:1]) is runs[0]


def test_runs_table_gives_each_round_its_own_ratio():
    bench = load_benchmark("bench_inference")
    runs = {
        "float32": [_run("fast", 300.0), _run("fast", 200.0), _run("fast", 330.0)],
        "allennlp": [_run("allennlp", 100.0), _run("allennlp", 50.0), _run("allennlp", 110.0)],
    }
    lines = bench._runs_table("original", runs)
    fast = next(line for line in lines if line.startswith("| fast"))
    assert fast == "| fast | 300.0 (3.00x) | 200.0 (4.00x) | 330.0 (3.00x) | 300.0 |"
    peer = next(line for line in lines if line.startswith("| allennlp"))
    assert peer == "| allennlp | 100.0 | 50.0 | 110.0 | 100.0 |"
    assert "| system | round 1 | round 2 | round 3 | median |" in lines
