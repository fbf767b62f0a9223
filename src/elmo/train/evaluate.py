"""Full-softmax perplexity and per-token log-likelihoods of a trained biLM.

``perplexity`` scores a corpus the way bilm-tf's ``run_test.py --batch_size 1`` does:
every sentence's ``<S> w1 .. wn`` predicts ``w1 .. wn </S>`` (backward: ``</S> wn .. w1``
predicts ``wn .. w1 <S>``), the sentences of the files follow each other in one stream,
and the LSTM state runs on from sentence to sentence. bilm-tf drops the tokens of an
incomplete last batch, so its figure depends on its batch size; here the stream is cut
into chunks of ``chunk_tokens`` positions, which only changes how many positions run
through the network at once: the result does not depend on it.

The combined figure is bilm-tf's: ``exp(0.5 * (mean CE_forward + mean CE_backward))``,
the geometric mean of the two perplexities.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from elmo.model import LayerState
from elmo.train.lm import TrainingBiLM
from elmo.train.vocab import Vocabulary, word_to_char_ids

__all__ = ["PerplexityResult", "perplexity", "sentence_log_probs"]


@dataclass
class PerplexityResult:
    """Perplexities of both directions and bilm-tf's combined figure."""

    forward: float
    backward: float
    combined: float
    tokens: int
    forward_cross_entropy: float
    backward_cross_entropy: float
    token_losses: np.ndarray | None = None  # [tokens, 2] per-position CE (forward, backward)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "forward": self.forward,
            "backward": self.backward,
            "combined": self.combined,
            "tokens": self.tokens,
            "forward_cross_entropy": self.forward_cross_entropy,
            "backward_cross_entropy": self.backward_cross_entropy,
        }


def _training_char_ids(tokens: list[str], max_chars: int) -> list[tuple[int, ...]]:
    return [word_to_char_ids(t, max_chars) for t in tokens]


def _positions(
    vocab: Vocabulary, sentences: Iterable[list[str]], bos: str, eos: str
) -> Iterator[tuple[tuple[str, int, str, int], ...]]:
    """Per sentence, the (input token, target id) pairs of both directions."""
    for tokens in sentences:
        fwd = vocab.encode(tokens)
        bwd = vocab.encode(list(reversed(tokens)), reverse=True)
        fwd_in = [bos, *tokens]
        bwd_in = [eos, *reversed(tokens)]
        yield tuple(zip(fwd_in, fwd[1:], bwd_in, bwd[1:]))


def _chunks(
    vocab: Vocabulary, sentences: Iterable[list[str]], size: int
) -> Iterator[list[tuple[str, int, str, int]]]:
    chunk: list[tuple[str, int, str, int]] = []
    for positions in _positions(vocab, sentences, "<S>", "</S>"):
        for p in positions:
            chunk.append(p)
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


@torch.no_grad()
def perplexity(
    model: TrainingBiLM,
    vocab: Vocabulary,
    sentences: Iterable[list[str]],
    chunk_tokens: int = 256,
    keep_token_losses: bool = False,
    progress: Any = None,
) -> PerplexityResult:
    """Full-softmax perplexity of ``sentences`` read as one continuous stream.

    ``progress`` may be a tqdm-like object; it is advanced by the tokens scored.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk size must be a positive number of tokens, found {chunk_tokens}")
    was_training = model.training
    model.eval()
    device = model.softmax.weight.device
    max_chars = model.config.char_cnn.max_characters_per_token
    state: list[LayerState] = model.zero_state(1)
    sums = [0.0, 0.0]
    count = 0
    kept: list[np.ndarray] = []
    try:
        for chunk in _chunks(vocab, sentences, chunk_tokens):
            fwd_in, fwd_t, bwd_in, bwd_t = zip(*chunk)
            ce = []
            finals = []
            for inputs, targets, layers, backward in (
                (fwd_in, fwd_t, model.encoder.forward_layers, False),
                (bwd_in, bwd_t, model.encoder.backward_layers, True),
            ):
                chars = torch.tensor([_training_char_ids(list(inputs), max_chars)], device=device)
                h, final = model.top_hidden(chars, layers, state, backward=backward)
                t = torch.tensor(targets, device=device)
                ce.append(model.softmax.full_loss(h.reshape(-1, h.shape[-1]), t).double())
                finals.append(final)
            state = [LayerState(fh, fc, bh, bc) for (fh, fc), (bh, bc) in zip(*finals)]
            sums[0] += float(ce[0].sum())
            sums[1] += float(ce[1].sum())
            count += len(chunk)
            if keep_token_losses:
                kept.append(torch.stack(ce, dim=1).cpu().numpy())
            if progress is not None:
                progress.update(len(chunk))
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no tokens to score: the data holds no sentences")
    mean_f, mean_b = sums[0] / count, sums[1] / count
    return PerplexityResult(
        forward=math.exp(mean_f),
        backward=math.exp(mean_b),
        combined=math.exp(0.5 * (mean_f + mean_b)),
        tokens=count,
        forward_cross_entropy=mean_f,
        backward_cross_entropy=mean_b,
        token_losses=np.concatenate(kept) if keep_token_losses else None,
    )


@torch.no_grad()
def sentence_log_probs(model: TrainingBiLM, vocab: Vocabulary, tokens: list[str]) -> dict[str, Tensor]:
    """Log-probabilities of one sentence's targets, each direction from zero state.

    Returns ``forward`` and ``backward`` [n + 1] log p(target) and the full
    distributions ``forward_full`` / ``backward_full`` [n + 1, V].
    """
    was_training = model.training
    model.eval()
    try:
        device = model.softmax.weight.device
        max_chars = model.config.char_cnn.max_characters_per_token
        state = model.zero_state(1)
        out: dict[str, Tensor] = {}
        for name, inputs, targets, layers, backward in (
            ("forward", ["<S>", *tokens], vocab.encode(tokens)[1:], model.encoder.forward_layers, False),
            (
                "backward",
                ["</S>", *reversed(tokens)],
                vocab.encode(list(reversed(tokens)), reverse=True)[1:],
                model.encoder.backward_layers,
                True,
            ),
        ):
            chars = torch.tensor([_training_char_ids(inputs, max_chars)], device=device)
            h, _ = model.top_hidden(chars, layers, state, backward=backward)
            logits = h[0] @ model.softmax.weight.t() + model.softmax.bias
            full = torch.log_softmax(logits, dim=-1)
            out[name + "_full"] = full
            out[name] = full.gather(1, torch.tensor(targets, device=device).unsqueeze(1))[:, 0]
        return out
    finally:
        model.train(was_training)
