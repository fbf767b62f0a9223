"""The TF Hub module's contract: signatures, outputs, shapes, trainable mix, bad calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import elmo
from conftest import random_sentences, run_in_threads

P = 16  # projection size of the tiny fixture model


def test_is_a_torch_module_with_hub_outputs(tiny_module):
    assert isinstance(tiny_module, torch.nn.Module)
    with torch.no_grad():
        out = tiny_module(["the cat sat", "hello"])
    assert set(out) == {"word_emb", "lstm_outputs1", "lstm_outputs2", "elmo", "default", "mask"}
    assert out["word_emb"].shape == (2, 3, P)
    for key in ("lstm_outputs1", "lstm_outputs2", "elmo"):
        assert out[key].shape == (2, 3, 2 * P)
    assert out["default"].shape == (2, 2 * P)
    assert out["mask"].dtype == torch.bool and out["mask"].tolist() == [[True] * 3, [True, False, False]]


def test_signatures_agree(tiny_module):
    with torch.no_grad():
        a = tiny_module(["the cat sat", "hello"])
        b = tiny_module(tokens=[["the", "cat", "sat"], ["hello", ""]], sequence_len=[3, 1])
        c = tiny_module(tokens=[["the", "cat", "sat"], ["hello"]])
        d = tiny_module(["  the  cat   sat ", "hello  "])
        tab = tiny_module(["the\tcat sat"])  # as the hub module: a tab is part of a token
    for key in a:
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]) and torch.equal(a[key], d[key])
    assert tab["mask"].sum().item() == 2


def test_empty_sentences(tiny_module):
    with torch.no_grad():
        out = tiny_module(["", "a b", "   "])
        only_empty = tiny_module(["", ""])
        none = tiny_module([])
    assert out["mask"].sum(1).tolist() == [0, 2, 0]
    assert torch.equal(out["default"][0], torch.zeros(2 * P))
    assert not torch.isnan(out["default"]).any()
    assert only_empty["word_emb"].shape == (2, 0, P)
    assert only_empty["elmo"].shape == (2, 0, 2 * P) and only_empty["mask"].shape == (2, 0)
    assert torch.equal(only_empty["default"], torch.zeros(2, 2 * P))
    assert none["elmo"].shape == (0, 0, 2 * P) and none["default"].shape == (0, 2 * P)


def test_elmo_is_the_gamma_scaled_softmax_mix(tiny_model_files):
    m = elmo.load(*tiny_model_files)
    with torch.no_grad():
        m.mix.weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
        m.mix.gamma.fill_(0.7)
        out = m(["the cat sat on the mat", "a dog"])
    w = torch.softmax(torch.tensor([0.3, -1.0, 2.0]), 0)
    layer0 = torch.cat([out["word_emb"], out["word_emb"]], -1)
    want = 0.7 * (w[0] * layer0 + w[1] * out["lstm_outputs1"] + w[2] * out["lstm_outputs2"])
    assert torch.allclose(out["elmo"], want, atol=1e-6)
    mask = out["mask"].unsqueeze(-1)
    mean = (out["elmo"] * mask).sum(1) / mask.sum(1)
    assert torch.allclose(out["default"], mean, atol=1e-6)


def test_default_mix_is_an_equal_average(tiny_module):
    with torch.no_grad():
        out = tiny_module(["one two"])
    layer0 = torch.cat([out["word_emb"], out["word_emb"]], -1)
    want = (layer0 + out["lstm_outputs1"] + out["lstm_outputs2"]) / 3
    assert torch.allclose(out["elmo"], want, atol=1e-6)


def test_only_the_mix_is_trainable_and_gets_gradients(tiny_model_files):
    m = elmo.load(*tiny_model_files)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"mix.weights", "mix.gamma"}
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 4
    out = m(["the cat sat", "a"])
    out["default"].sum().backward()
    assert m.mix.weights.grad is not None and m.mix.weights.grad.abs().sum() > 0
    assert m.mix.gamma.grad is not None and m.mix.gamma.grad != 0
    assert all(p.grad is None for p in m.bilm.parameters())


def test_finetune_makes_the_bilm_trainable(tiny_model_files):
    m = elmo.load(*tiny_model_files, finetune=True)
    assert all(p.requires_grad for p in m.parameters())
    m(["the cat sat", "a"])["elmo"].pow(2).sum().backward()
    for name, p in m.bilm.named_parameters():
        assert p.grad is not None, name
    assert m.bilm.forward_layers[1].kernel.grad.abs().sum() > 0
    assert m.bilm.token_encoder.char_embed.grad[0].abs().sum() == 0  # padding row
    m.finetune = False
    assert not any(p.requires_grad for p in m.bilm.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, TypeError, "expected sentences .* or tokens= .* found neither"),
        ({"sentences": None}, TypeError, "found neither"),
        ({"sentences": "a sentence"}, TypeError, "wrap it in a list"),
        ({"sentences": [1, 2]}, TypeError, r"sentences\[0\]: expected a string, found int"),
        ({"sentences": ["a"], "tokens": [["a"]]}, TypeError, "not both"),
        ({"sentences": ["a"], "sequence_len": [1]}, TypeError, "sequence_len= goes with tokens="),
        ({"tokens": ["a", "b"]}, TypeError, "tokens must be nested"),
        ({"tokens": [["a", "b"]], "sequence_len": [3]}, ValueError, "longer than row 0"),
        ({"tokens": [["a", "b"]], "sequence_len": [-1]}, ValueError, "expected a length >= 0"),
        ({"tokens": [["a"], ["b"]], "sequence_len": [1, 1, 1]}, ValueError, "expected 2 lengths"),
    ],
)
def test_malformed_calls(tiny_module, kwargs, error, message):
    sentences = kwargs.pop("sentences", None)
    with pytest.raises(error, match=message):
        tiny_module(sentences, **kwargs)


def test_device_and_dtype_follow_the_module(tiny_module):
    with torch.no_grad():
        out = tiny_module(["a b"])
    assert out["elmo"].dtype == torch.float32 and out["elmo"].device.type == "cpu"


def test_tokens_signature_keeps_the_padded_width(tiny_module):
    """The hub module's tokens signature: T is the padded input's width, zeros past each length."""
    row = ["the", "cat", "sat", "on", "the", "mat", "", ""]
    with torch.no_grad():
        out = tiny_module(tokens=[row, row[:5] + [""] * 3], sequence_len=[6, 5])
        alone = tiny_module(tokens=[row[:6]])
    assert out["elmo"].shape == (2, 8, 32) and out["mask"].sum(dim=1).tolist() == [6, 5]
    assert not out["elmo"][0, 6:].any() and not out["elmo"][1, 5:].any() and not out["word_emb"][1, 5:].any()
    assert torch.allclose(out["elmo"][0, :6], alone["elmo"][0], atol=1e-6)
    assert torch.allclose(out["default"][0], alone["default"][0], atol=1e-6)
    # ragged token lists (no sequence_len): T is the longest sentence
    assert tiny_module(tokens=[row[:3], row[:2]])["elmo"].shape == (2, 3, 32)


def test_calls_written_for_the_hub_module(tiny_module):
    with torch.no_grad():
        want = tiny_module(["the cat sat", "hello"])
        got = tiny_module(["the cat sat", "hello"], signature="default", as_dict=True)
        assert torch.equal(got["elmo"], want["elmo"])
        assert torch.equal(
            tiny_module({"strings": ["the cat sat", "hello"]}, signature="default")["elmo"], want["elmo"]
        )
        tokens = tiny_module(
            inputs={"tokens": [["the", "cat", "sat"], ["hello", "", ""]], "sequence_len": [3, 1]},
            signature="tokens",
            as_dict=True,
        )
        assert torch.equal(tokens["elmo"], want["elmo"])
        # as_dict=False: the "default" output alone, as the hub module returns it
        assert torch.equal(tiny_module(["the cat sat", "hello"], as_dict=False), want["default"])
    with pytest.raises(ValueError, match="signature='tokens' does not fit the call"):
        tiny_module(["a b"], signature="tokens")
    with pytest.raises(TypeError, match="expected both 'tokens' and 'sequence_len'"):
        tiny_module(inputs={"tokens": [["a"]]}, signature="tokens")
    with pytest.raises(TypeError, match=r"expected the keys \['strings'\], found \['text'\]"):
        tiny_module(inputs={"text": ["a"]})
    with pytest.raises(ValueError, match="signature: expected 'default' or 'tokens', found 'other'"):
        tiny_module(inputs={"strings": ["a"]}, signature="other")


@pytest.mark.parametrize("engine", ["fast", "plain"])
def test_one_module_serves_many_threads(tiny_model_files, engine, one_intra_op_thread):
    """Calls of one module from 8 threads (``m(...)`` and ``m.embed``, mixed batches, a small
    token cache) give exactly what the same calls give one after another, and the module
    still does afterwards."""
    m = elmo.load(*tiny_model_files, engine=engine, cache_size=8)
    sentences = random_sentences(5, 60)
    batches = [sentences[k : k + 1 + k % 5] for k in range(0, 48, 3)]
    with torch.no_grad():
        want = [m(tokens=b)["elmo"] for b in batches]
    want_embed = [m.embed(b, batch_size=2) for b in batches]

    def call(batch):
        with torch.no_grad():
            return m(tokens=batch)["elmo"]

    for _ in range(2):
        got = run_in_threads([lambda b=b: call(b) for b in batches])
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        got_embed = run_in_threads([lambda b=b: m.embed(b, batch_size=2) for b in batches])
        for arrays, expected in zip(got_embed, want_embed, strict=True):
            assert all(np.array_equal(a, b) for a, b in zip(arrays, expected, strict=True))
    with torch.no_grad():
        assert all(torch.equal(m(tokens=b)["elmo"], w) for b, w in zip(batches, want))
