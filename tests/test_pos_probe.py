"""The POS-probe benchmark's pieces (``benchmarks/pos_probe.py``): reader, probes, pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ALLENNLP, SHARED, load_benchmark, needs_shared
from elmo.mix import ScalarMix

EWT = SHARED / "data" / "ud-english-ewt"


pp = load_benchmark("pos_probe")

CONLLU = """\
# sent_id = one
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_
4.1\tit\tit\tPRON\tPRP\t_\t_\t_\t4:obj\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = two
1\tHello\thello\tINTJ\tUH\t_\t0\troot\t_\t_
"""


def test_reader_skips_comments_multiword_tokens_and_empty_nodes() -> None:
    sentences = pp.parse_conllu(CONLLU.splitlines(keepends=True), "x.conllu")
    assert [s.words for s in sentences] == [("I", "do", "n't", "know", "."), ("Hello",)]
    assert sentences[0].tags == ("PRON", "AUX", "PART", "VERB", "PUNCT")
    assert sentences[1].tags == ("INTJ",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("2\tcat\tcat\tNOUN\tNN\t_\t0\troot\t_", "x.conllu:3: expected 10 tab-separated columns, found 9"),
        ("3\tcat\tcat\tNOUN\tNN\t_\t0\troot\t_\t_", "x.conllu:3: word ID 3 out of sequence (expected 2)"),
        ("2\tcat\tcat\tNOUNS\tNN\t_\t0\troot\t_\t_", "x.conllu:3: unknown UPOS 'NOUNS'"),
        ("2-x\tcat\t_\t_\t_\t_\t_\t_\t_\t_", "x.conllu:3: malformed ID '2-x'"),
        ("two\tcat\tcat\tNOUN\tNN\t_\t0\troot\t_\t_", "x.conllu:3: malformed ID 'two'"),
    ],
)
def test_reader_errors_name_file_and_line(line: str, message: str) -> None:
    text = f"# c\n1\tthe\tthe\tDET\tDT\t_\t2\tdet\t_\t_\n{line}\n"
    with pytest.raises(pp.ConlluError) as info:
        pp.parse_conllu(text.splitlines(), "x.conllu")
    assert str(info.value).startswith(message)


@needs_shared(EWT)
def test_reader_on_the_real_dev_file() -> None:
    dev = pp.read_conllu(EWT / "en_ewt-ud-dev.conllu")
    assert len(dev) == 2001
    assert sum(len(s.words) for s in dev) == 25147


def _toy_split(n: int, seed: int, widths: tuple[int, ...]) -> object:
    """Tokens whose tag is a linear function of layer 1 (correlated, unevenly scaled dims)."""
    g = np.random.default_rng(seed)
    tags = g.integers(0, len(pp.UPOS_TAGS), n)
    centres = np.random.default_rng(99).normal(size=(len(pp.UPOS_TAGS), widths[1])) * 4
    mixing = np.random.default_rng(98).normal(size=(widths[1], widths[1])) * np.linspace(0.01, 10, widths[1])
    informative = (centres[tags] + g.normal(size=(n, widths[1]))) @ mixing
    layers = [g.normal(size=(n, w)) for w in widths]
    layers[1] = informative
    return pp.SplitFeatures([x.astype(np.float16) for x in layers], tags.astype(np.int64), n_sentences=1)


def test_linear_probe_separates_a_separable_toy_set() -> None:
    widths = (4, 8, 8)
    splits = {name: _toy_split(400, seed, widths) for seed, name in enumerate(pp.SPLITS)}
    rows = {r.features: r for r in pp.run_probes(splits, pp.ProbeSettings(l2=(0.0, 1e-3), epochs=40))}
    assert list(rows) == ["word_emb", "lstm_outputs1", "lstm_outputs2", "elmo"]
    assert rows["lstm_outputs1"].train == 1.0
    assert rows["lstm_outputs1"].dev > 0.99 and rows["lstm_outputs1"].test > 0.99
    assert rows["word_emb"].dev < 0.2  # noise: chance is 1/17
    # The mix finds the informative layer and puts most of its weight there.
    assert rows["elmo"].dev > 0.99
    assert rows["elmo"].mix_weights is not None and np.argmax(rows["elmo"].mix_weights) == 1
    assert rows["elmo"].width == 8 and rows["word_emb"].width == 4
    gain = pp.contextual_gain(list(rows.values()))
    assert gain["best"] in ("lstm_outputs1", "elmo") and gain["dev"] > 0.7


def test_mix_probe_is_a_scalar_mix_of_whitened_layers_with_word_emb_duplicated() -> None:
    g = torch.Generator().manual_seed(0)
    layers = [
        torch.randn(50, 3, generator=g),
        torch.randn(50, 6, generator=g),
        torch.randn(50, 6, generator=g),
    ]
    whiteners = [pp.Whitener.fit(x.numpy()) for x in layers]
    probe = pp.LinearProbe(whiteners, 5, mix=True)
    assert isinstance(probe.mix, ScalarMix) and not probe.mix.gamma.requires_grad
    with torch.no_grad():
        probe.weight.normal_(generator=g)
        probe.bias.normal_(generator=g)
        probe.mix.weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
    white = [(x - w.mean) @ w.matrix for x, w in zip(layers, whiteners)]
    # Whitened: zero mean, identity covariance on the training rows.
    assert torch.allclose(white[1].T @ white[1] / 50, torch.eye(6), atol=1e-4)
    expected = probe.mix([torch.cat([white[0], white[0]], dim=1), white[1], white[2]]) @ probe.weight
    assert torch.allclose(probe(layers), expected + probe.bias, atol=1e-4)


@needs_shared(ALLENNLP)
@needs_shared(EWT)
def test_whole_pipeline_on_twenty_sentences_with_the_tiny_model(tmp_path: Path) -> None:
    args = [
        "--model",
        str(ALLENNLP / "options.json"),
        "--weights",
        str(ALLENNLP / "lm_weights.hdf5"),
        "--random-baseline",
        "--limit-train",
        "20",
        "--limit-eval",
        "10",
        "--epochs",
        "15",
        "--l2",
        "0",
        "1e-3",
        "--threads",
        "1",
        "--cache",
        str(tmp_path / "cache"),
        "--json",
        str(tmp_path / "out.json"),
        "--append",
    ]
    results_md = tmp_path / "RESULTS.md"
    threads = torch.get_num_threads()
    try:
        report = pp.main(args, results_path=results_md)
        # A second run reads the cache instead of embedding again.
        again = pp.main([*args[:-3], "--epochs", "1"], results_path=results_md)
    finally:
        torch.set_num_threads(threads)  # main() sets it for the whole process
    assert report == json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert [r["model"] for r in report["results"]] == ["trained", "random init"]
    n_train = report["data"]["train"]["tokens"]
    assert report["data"]["train"]["sentences"] == 20 and report["data"]["dev"]["sentences"] == 10
    for result in report["results"]:
        assert [row["features"] for row in result["rows"]] == [
            "word_emb",
            "lstm_outputs1",
            "lstm_outputs2",
            "elmo",
        ]
        assert [row["width"] for row in result["rows"]] == [16, 32, 32, 32]  # the tiny model: P = 16
        for row in result["rows"]:
            assert row["l2"] in (0.0, 1e-3) and len(row["tried"]) == 2
            assert all(0.0 <= row[split] <= 1.0 for split in ("train", "dev", "test"))
        assert abs(sum(result["rows"][-1]["mix_weights"]) - 1) < 1e-5
    # The features were stored once per model and split, float16, one row per word.
    stored = sorted((tmp_path / "cache").glob("*/train-*/layer1.npy"))
    assert len(stored) == 2
    layer = np.load(stored[0], mmap_mode="r")
    assert layer.dtype == np.float16 and layer.shape == (n_train, 32)
    text = results_md.read_text(encoding="utf-8")
    assert "QUICK RUN" in text and "python benchmarks/pos_probe.py --model" in text
    assert "| random init | elmo | 32 |" in text
    assert all(v is None for r in again["results"] for v in r["embed_seconds"].values())
    assert all(v is not None and v >= 0 for r in report["results"] for v in r["embed_seconds"].values())
