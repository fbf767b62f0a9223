"""The plain biLM: batch independence, padding, chunking, state carrying.

Modules here are loaded with ``engine="plain"``: these tests are about the reference
model; ``tests/test_fast.py`` holds the fast engine's counterparts.
"""

from __future__ import annotations

import pytest
import torch

import elmo
from conftest import reference_sentences
from elmo.chars import batch_to_char_ids
from elmo.model import MIN_ROWS, ElmoBiLM, LayerState, linear

OUTPUTS = ("word_emb", "lstm_outputs1", "lstm_outputs2", "elmo")


@pytest.fixture(scope="module")
def small(small_model_dir):
    return elmo.load(small_model_dir, engine="plain")


def test_linear_rounding_does_not_depend_on_row_count():
    torch.manual_seed(0)
    w, b = torch.randn(300, 700), torch.randn(700)
    x = torch.randn(40, 300)
    full = linear(x, w, b)
    for rows in (1, 2, 3, 5, MIN_ROWS - 1, MIN_ROWS, 17):
        assert torch.equal(linear(x[:rows], w, b), full[:rows])
    assert linear(x[:0], w, b).shape == (0, 700)


@pytest.mark.parametrize("target", [0, 1, 13, 30])
def test_sentence_alone_equals_sentence_in_batch(small, target):
    """Stateless: a sentence's output does not depend on its batch (longer and shorter ones)."""
    sentences = reference_sentences()
    batch = [sentences[30], sentences[1], sentences[target], sentences[11], sentences[3]]
    n = len(sentences[target])
    with torch.no_grad():
        alone = small(tokens=[sentences[target]])
        inside = small(tokens=batch)
    for key in OUTPUTS:
        assert (alone[key][0, :n] - inside[key][2, :n]).abs().max() <= 1e-6, key
    assert (alone["default"][0] - inside["default"][2]).abs().max() <= 1e-6


def test_batch_order_does_not_matter(small):
    sentences = reference_sentences()[:6]
    with torch.no_grad():
        forward = small(tokens=sentences)
        backward = small(tokens=sentences[::-1])
    for key in OUTPUTS:
        assert (forward[key] - backward[key].flip(0)[:, : forward[key].shape[1]]).abs().max() <= 1e-6


def test_padded_positions_are_exactly_zero(small):
    with torch.no_grad():
        out = small(["a b c d e f g", "one", "", "x y"])
    mask = out["mask"]
    assert mask.tolist()[1] == [True] + [False] * 6
    for key in OUTPUTS:
        assert (out[key][~mask] == 0).all(), key
        assert (out[key][mask].abs().sum(-1) > 0).all(), key
    assert (out["default"][2] == 0).all()


def test_chunking_changes_nothing(small):
    """A 2,000-token sentence with tiny chunks equals the unchunked computation."""
    words = [w for s in reference_sentences() for w in s]
    sentence = (words * 5)[:2000]
    bilm = small.bilm
    char_ids = batch_to_char_ids([sentence])
    with torch.no_grad():
        bilm.token_encoder.chunk_size = 10**9
        for layer in [*bilm.forward_layers, *bilm.backward_layers]:
            layer.rows_per_block = 10**9
        whole = bilm(char_ids).layers
        bilm.token_encoder.chunk_size = 37
        for layer in [*bilm.forward_layers, *bilm.backward_layers]:
            layer.rows_per_block = 101
        chunked = bilm(char_ids).layers
        bilm.token_encoder.chunk_size = 256
        for layer in [*bilm.forward_layers, *bilm.backward_layers]:
            layer.rows_per_block = 1024
    for a, b in zip(whole, chunked):
        assert a.shape == b.shape
        # Other matmul blockings round differently: float32 tolerance.
        assert (a - b).abs().max() <= 1e-5


def test_char_ids_padding_must_follow_tokens(tiny_module):
    ids = batch_to_char_ids([["a", "b", "c"]])
    ids[0, 1] = 0
    with pytest.raises(ValueError, match=r"padding tokens .* must come after"):
        tiny_module.bilm(ids)


def _copy(state: list[LayerState]) -> list[LayerState]:
    return [LayerState(*(t.clone() for t in vars(s).values())) for s in state]


def test_explicit_state_in_and_out(tiny_module):
    """Feeding back the returned state continues a sentence stream, row by row."""
    bilm: ElmoBiLM = tiny_module.bilm
    first = batch_to_char_ids([["the", "cat"], ["a"]])
    second = batch_to_char_ids([["sat"], ["dog", "ran"]])
    with torch.no_grad():
        out1 = bilm(first)
        carried = bilm(second, _copy(out1.state)).layers[2]
        fresh = bilm(second).layers[2]
        row1 = bilm(second[1:], [s.rows(slice(1, 2)) for s in out1.state]).layers[2]
    assert (carried - fresh).abs().max() > 1e-3
    assert torch.equal(row1[0], carried[1, : row1.shape[1]])


def test_stateful_module_follows_allennlp_row_rules(tiny_model_files):
    """Row r continues row r; a smaller batch keeps the unused rows; new rows start at zero."""
    stateful = elmo.load(*tiny_model_files, stateful=True, engine="plain")
    plain = elmo.load(*tiny_model_files, engine="plain")
    bilm = plain.bilm
    a = [["the", "cat", "sat"], ["hello"], ["three", "rows", "here"]]
    b = [["next"], ["batch", "is", "smaller"]]
    c = [["row", "zero"], ["row", "one"], ["row", "two"], ["a", "new", "row"]]
    with torch.no_grad():
        stateful(tokens=a)
        stateful(tokens=b)
        got = stateful(tokens=c)["lstm_outputs2"]
        s_a = bilm(batch_to_char_ids(a)).state
        s_b = bilm(batch_to_char_ids(b), [s.rows(slice(0, 2)) for s in s_a]).state
        # rows 0, 1 come from batch b, row 2 from batch a, row 3 starts from zero
        init = []
        for sa, sb, z in zip(s_a, s_b, bilm.zero_state(4)):
            parts = []
            for ta, tb, tz in zip(vars(sa).values(), vars(sb).values(), vars(z).values()):
                tz[:2], tz[2] = tb, ta[2]
                parts.append(tz)
            init.append(LayerState(*parts))
        want = bilm(batch_to_char_ids(c), init).layers[2]
        assert torch.equal(got, want)

        stateful.reset_state()
        after_reset = stateful(tokens=c)["lstm_outputs2"]
        assert torch.equal(after_reset, plain(tokens=c)["lstm_outputs2"])


def test_empty_sentence_still_advances_the_state(tiny_model_files):
    """As in the references, <S> </S> of an empty sentence run through the LSTMs."""
    m = elmo.load(*tiny_model_files, stateful=True, engine="plain")
    with torch.no_grad():
        empty = m([""])
        after = m(["hello world"])["lstm_outputs2"]
        m.reset_state()
        fresh = m(["hello world"])["lstm_outputs2"]
    assert empty["lstm_outputs2"].shape == (1, 0, 32)
    assert (after - fresh).abs().max() > 1e-4


def test_keep_boundaries_adds_the_marker_positions(tiny_module):
    bilm = tiny_module.bilm
    ids = batch_to_char_ids([["the", "cat", "sat"], ["a"]])
    with torch.no_grad():
        plain = bilm(ids)
        kept = bilm(ids, keep_boundaries=True)
        markers = bilm.token_encoder(bilm._marker_ids)
    assert kept.mask.tolist() == [[True] * 5, [True, True, True, False, False]]
    for a, b in zip(plain.layers, kept.layers):
        assert b.shape[1] == a.shape[1] + 2
        assert torch.equal(b[0, 1:4], a[0]) and torch.equal(b[1, 1:2], a[1, :1])
        assert (b[~kept.mask] == 0).all()
    assert torch.equal(kept.layers[0][1, 0], markers[0]) and torch.equal(kept.layers[0][1, 2], markers[1])


def test_one_token_sentence_alone_equals_in_batch(tiny_model_files):
    """A single token goes through the convolution on its own; padding keeps it on one kernel."""
    m = elmo.load(*tiny_model_files, engine="plain")
    with torch.no_grad():
        alone = m(["d"])
        inside = m(["a b c", "", "d"])
    for key in OUTPUTS:
        assert torch.equal(alone[key][0, :1], inside[key][2, :1]), key
