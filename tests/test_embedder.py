"""``m.embed`` / ``m.embed_iter``: the one-call API against the module's own outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import elmo
from conftest import random_sentences, reference_sentences
from elmo.choices import LAYERS
from elmo.embedder import split_outputs

SENTENCES = [
    "The cat sat on the mat .",
    "",
    "Zürich , São Paulo and Kraków",
    "x" * 70 + " short",
    "東京 是 日本 的 首都 。",
    "one",
    "   ",
    "😀😀😀 emoji 👩‍👩‍👧",
]


def _expected(m, sentence: str) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = m([sentence])
    n = int(out["mask"].sum())
    word = out["word_emb"][0, :n]
    layers = [torch.cat([word, word], -1), out["lstm_outputs1"][0, :n], out["lstm_outputs2"][0, :n]]
    return {
        "all": torch.stack(layers).numpy(),
        "top": layers[2].numpy(),
        "average": (sum(layers[1:], layers[0]) / 3).numpy(),
        "elmo": out["elmo"][0, :n].numpy(),
        "word_emb": word.numpy(),
        "default": out["default"][0].numpy(),
    }


@pytest.mark.parametrize("layers", ["all", "top", "average", "elmo", "word_emb", "default"])
def test_embed_matches_module_outputs_in_input_order(small_model_dir, layers):
    m = elmo.load(small_model_dir)
    with torch.no_grad():
        m.mix.weights.copy_(torch.tensor([0.5, -0.2, 0.1]))
    got = m.embed(SENTENCES, layers=layers, batch_size=3)
    assert len(got) == len(SENTENCES)
    for sentence, array in zip(SENTENCES, got):
        want = _expected(m, sentence)[layers]
        assert array.dtype == np.float32 and array.shape == want.shape, sentence
        assert np.allclose(array, want, rtol=1e-5, atol=1e-5), sentence


def test_token_lists_and_strings_agree(tiny_module):
    a = tiny_module.embed(["a b c", "d"], layers="top")
    b = tiny_module.embed([["a", "b", "c"], ["d"]], layers="top")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_embed_iter_is_lazy_and_ordered(tiny_module):
    sentences = [" ".join(s) for s in reference_sentences()]
    seen = []

    def source():
        for s in sentences:
            seen.append(s)
            yield s

    it = tiny_module.embed_iter(source(), layers="top", batch_size=2)
    first = next(it)
    assert len(seen) < len(sentences)  # only a window was read
    rest = list(it)
    want = tiny_module.embed(sentences, layers="top")
    assert all(np.array_equal(x, y) for x, y in zip([first, *rest], want))


def test_stateful_embedding_keeps_input_order_batches(tiny_model_files):
    """Stateful mode embeds in input order so the carried state follows the input."""
    sentences = ["a b c d e f", "g", "h i j", "k l"]
    m = elmo.load(*tiny_model_files, stateful=True)
    got = m.embed(sentences, layers="top", batch_size=2)
    m2 = elmo.load(*tiny_model_files, stateful=True)
    with torch.no_grad():
        first = m2(sentences[:2])["lstm_outputs2"]
        second = m2(sentences[2:])["lstm_outputs2"]
    assert np.array_equal(got[1], first[1, :1].numpy())
    assert np.array_equal(got[3], second[1, :2].numpy())


def test_bad_arguments(tiny_module):
    with pytest.raises(ValueError, match="layers: expected one of all, top"):
        tiny_module.embed(["a"], layers="middle")
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        tiny_module.embed(["a"], batch_size=0)
    with pytest.raises(TypeError, match="wrap a single sentence in a list"):
        tiny_module.embed("a b")
    with pytest.raises(TypeError, match=r"sentences\[1\]: expected a string or a list of token strings"):
        tiny_module.embed(["a", 5])


def test_embed_file_method(tiny_module, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a b c\n\nd\n", encoding="utf-8")
    summary = tiny_module.embed_file(src, tmp_path / "out.hdf5", layers="top")
    assert summary["lines"] == 3 and summary["tokens"] == 4
    import h5py

    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        assert f["0"].shape == (3, 32) and f["1"].shape == (0, 32)
        assert np.array_equal(f["2"][()], tiny_module.embed(["d"], layers="top")[0])


@pytest.mark.parametrize("engine", ["fast", "plain"])
def test_embed_batch_is_the_padded_outputs_split(tiny_model_files, engine):
    """One model call for several choices: the fast engine computes real tokens only, the
    plain model runs padded; either way each choice is what ``split_outputs`` makes of the
    padded outputs (the mean over tokens of ``default`` within float32 rounding)."""
    m = elmo.load(*tiny_model_files, engine=engine)
    batch = [*random_sentences(2, 30), ["x" * 70, "y"], []]
    got = m.embed_batch_layers(batch, LAYERS)
    assert list(got) == list(LAYERS)
    with torch.no_grad():
        out = m.embed_tokens(batch)
    for layers in LAYERS:
        want = split_outputs(out, layers, m.config.lstm.n_layers)
        assert len(got[layers]) == len(batch)
        for g, w in zip(got[layers], want):
            assert g.dtype == np.float32 and g.shape == w.shape and g.flags.c_contiguous
            if layers == "default":
                np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
            else:
                assert np.array_equal(g, w), layers
    assert m.embed_batch([], "elmo") == []
    with pytest.raises(ValueError, match="layers: expected one of all, top"):
        m.embed_batch_layers(batch, ["elmo", "middle"])
