"""The training biLM (elmo.train.lm) against the plain reference model (elmo.model).

The trainer runs the LSTM with its own loop (:func:`elmo.train.lm.run_lstm`: plain
products, no masking, autograd); these tests pin it to :class:`elmo.model.LSTMLayer` with
the cell and projection clips active. Both step through :func:`elmo.model.lstm_cell`, and
from ``MIN_ROWS`` rows on both compute the same products, so they agree bit for bit. With
fewer rows the plain model pads its products to ``MIN_ROWS`` rows (another BLAS kernel,
another summation order) and the trainer does not: they then agree to float32 rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch

from elmo.chars import BOS_TOKEN, EOS_TOKEN, batch_to_char_ids, token_to_char_ids
from elmo.config import ElmoConfig
from elmo.model import MIN_ROWS, ElmoBiLM, LayerState, LSTMLayer
from elmo.train.lm import TrainingBiLM, init_like_bilm_tf, run_lstm

# Below MIN_ROWS rows the products round differently, and the saturated, clipped
# recurrence of these tests amplifies that to a few 1e-6.
SMALL_BATCH_ATOL = 1e-5
CLIP = 3.0
# LSTM weights this many times bilm-tf's initial scale saturate the gates, so that the
# memory cell reaches the cell clip and the projection the projection clip.
GAIN = 4.0
OPTIONS = {
    "lstm": {
        "dim": 16,
        "projection_dim": 8,
        "n_layers": 2,
        "cell_clip": CLIP,
        "proj_clip": CLIP,
        "use_skip_connections": True,
    },
    "char_cnn": {
        "n_characters": 261,
        "max_characters_per_token": 10,
        "filters": [[1, 8], [2, 8], [3, 16]],
        "activation": "relu",
        "embedding": {"dim": 4},
        "n_highway": 1,
    },
    "dropout": 0.5,
}
WORDS = "the cat sat on a mat colourless green ideas sleep furiously today , . !".split()
# Every sentence has 7 words: the trainer does not mask, so its rows have no padding.
SENTENCES = [[WORDS[(3 * row + 5 * k) % len(WORDS)] for k in range(7)] for row in range(MIN_ROWS)]


def _models(seed: int = 0) -> tuple[TrainingBiLM, ElmoBiLM]:
    """A training biLM with saturating LSTM weights (dropout off) and a plain copy of its encoder."""
    config = ElmoConfig.from_dict(OPTIONS)
    model = TrainingBiLM(config, vocab_size=20)
    generator = torch.Generator().manual_seed(seed)
    init_like_bilm_tf(model, generator)
    with torch.no_grad():
        for layer in [*model.encoder.forward_layers, *model.encoder.backward_layers]:
            layer.kernel.mul_(GAIN)
            layer.projection.mul_(GAIN)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator))
    model.eval()  # no dropout
    plain = ElmoBiLM(config)
    plain.load_state_dict(model.encoder.state_dict())
    return model, plain


def _random_state(plain: ElmoBiLM, batch: int, seed: int) -> list[LayerState]:
    g = torch.Generator().manual_seed(seed)
    return [
        LayerState(
            *(
                torch.randn(t.shape, generator=g)
                for t in (s.forward_h, s.forward_c, s.backward_h, s.backward_c)
            )
        )
        for s in plain.zero_state(batch)
    ]


def _training_chars(sentences: list[list[str]], reverse: bool, max_chars: int) -> torch.Tensor:
    """Training character ids (no +1 shift) of each sentence framed by its markers."""
    rows = []
    for tokens in sentences:
        stream = [EOS_TOKEN, *reversed(tokens), BOS_TOKEN] if reverse else [BOS_TOKEN, *tokens, EOS_TOKEN]
        rows.append([token_to_char_ids(t, max_chars) for t in stream])
    return torch.tensor(rows) - 1


def _assert_same(got: torch.Tensor, want: torch.Tensor, what: str, atol: float = 0.0) -> None:
    diff = float((got - want).abs().max())
    assert diff <= atol, f"{what}: max abs diff {diff:.2e} > {atol:.0e}"


@pytest.mark.parametrize("layer_index", [0, 1])
@pytest.mark.parametrize(("batch", "atol"), [(MIN_ROWS, 0.0), (MIN_ROWS + 5, 0.0), (3, SMALL_BATCH_ATOL)])
def test_run_lstm_equals_the_reference_layer_with_clipping(layer_index, batch, atol):
    model, plain = _models()
    layer: LSTMLayer = plain.forward_layers[layer_index]
    g = torch.Generator().manual_seed(layer_index)
    steps, width = 12, layer.input_dim
    x = 2 * torch.randn(batch, steps, width, generator=g)
    h0 = torch.randn(batch, layer.projection.shape[1], generator=g)
    c0 = torch.randn(batch, layer.projection.shape[0], generator=g)
    with torch.no_grad():
        want_out, want_h, want_c = layer(x, torch.ones(batch, steps, dtype=torch.bool), h0, c0)
        got_out, got_h, got_c = run_lstm(model.encoder.forward_layers[layer_index], x, h0, c0)
    # Both clips are hit, so the test covers them.
    assert (want_out.abs() == CLIP).any()
    unclipped = copy.deepcopy(layer)
    unclipped.cell_clip = None
    with torch.no_grad():
        free_out, _, _ = unclipped(x, torch.ones(batch, steps, dtype=torch.bool), h0, c0)
    assert not torch.equal(free_out, want_out)  # clamp is the identity unless c exceeds the clip
    _assert_same(got_out, want_out, "outputs", atol)
    _assert_same(got_h, want_h, "final h", atol)
    _assert_same(got_c, want_c, "final c", atol)


def test_training_bilm_equals_the_plain_bilm():
    """Both directions, both layers (skip connection included), from a carried state; dropout off."""
    model, plain = _models(seed=1)
    max_chars = OPTIONS["char_cnn"]["max_characters_per_token"]
    state = _random_state(plain, len(SENTENCES), seed=2)
    with torch.no_grad():
        want = plain(batch_to_char_ids(SENTENCES, max_chars), state, keep_boundaries=True)
        fwd, fwd_final = model.top_hidden(
            _training_chars(SENTENCES, False, max_chars), model.encoder.forward_layers, state, backward=False
        )
        bwd, bwd_final = model.top_hidden(
            _training_chars(SENTENCES, True, max_chars), model.encoder.backward_layers, state, backward=True
        )
    proj = OPTIONS["lstm"]["projection_dim"]
    top = want.layers[-1]
    assert (want.layers[1].abs() == CLIP).any()  # the first layer's outputs (no skip) hit the clip
    unclipped = copy.deepcopy(plain)
    for layer in [*unclipped.forward_layers, *unclipped.backward_layers]:
        layer.cell_clip = None
    with torch.no_grad():
        free = unclipped(batch_to_char_ids(SENTENCES, max_chars), state, keep_boundaries=True)
    assert not torch.equal(free.layers[-1], top)  # the cell clip acts too
    _assert_same(fwd, top[:, :, :proj], "forward top layer")
    # The backward stream reads each sentence right to left: step t is position T + 1 - t.
    _assert_same(bwd, top[:, :, proj:].flip(1), "backward top layer")
    for k, s in enumerate(want.state):
        _assert_same(fwd_final[k][0], s.forward_h, f"layer {k} forward h")
        _assert_same(fwd_final[k][1], s.forward_c, f"layer {k} forward c")
        _assert_same(bwd_final[k][0], s.backward_h, f"layer {k} backward h")
        _assert_same(bwd_final[k][1], s.backward_c, f"layer {k} backward c")
