"""Parity with the outputs of the reference implementations (../shared/fixtures)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import elmo
from conftest import ALLENNLP, BILMTF, FIXTURES, REFERENCE, fixture_batches, needs_shared, reference_sentences
from elmo.chars import batch_to_char_ids

pytestmark = needs_shared(FIXTURES)


def _top_layer_refs(folder, prefix="lm_embeddings"):
    files = [h5py.File(folder / f"{prefix}_{k}.hdf5", "r") for k in range(3)]
    return [[np.concatenate(list(f[str(i)][()]), axis=-1) for f in files] for i in range(10)]


@pytest.mark.parametrize(
    ("folder", "options", "weights", "sentences"),
    [
        (ALLENNLP, "options.json", "lm_weights.hdf5", "sentences.json"),
        (BILMTF / "model", "options.json", "lm_weights.hdf5", "lm_embeddings_sentences.json"),
    ],
    ids=["allennlp", "bilm-tf"],
)
def test_stateful_mode_reproduces_lm_embeddings(folder, options, weights, sentences):
    """Ten batches of three sentences through one stateful model, from zero state.

    The bilm-tf model has no skip connections (use_skip_connections false).
    """
    m = elmo.load(folder / options, folder / weights, stateful=True)
    refs = _top_layer_refs(folder)
    worst = 0.0
    with torch.no_grad():
        for i, batch in enumerate(fixture_batches(folder / sentences)):
            out = m(batch)
            for k, sentence in enumerate(batch):
                n = len(sentence.split())
                got = out["lstm_outputs2"][k, :n].numpy()
                assert got.shape == refs[i][k].shape
                worst = max(worst, float(np.abs(got - refs[i][k]).max()))
    assert worst <= 1e-5, worst


def test_stateless_mode_differs_from_stateful_lm_embeddings():
    """The fixtures really are stateful: without carried state only batch 0 matches."""
    m = elmo.load(ALLENNLP / "options.json", ALLENNLP / "lm_weights.hdf5")
    refs = _top_layer_refs(ALLENNLP)
    batches = fixture_batches(ALLENNLP / "sentences.json")
    with torch.no_grad():
        first = m(batches[0])["lstm_outputs2"][0, : refs[0][0].shape[0]].numpy()
        later = m(batches[5])["lstm_outputs2"][0, : refs[5][0].shape[0]].numpy()
    assert np.abs(first - refs[0][0]).max() <= 1e-5
    assert np.abs(later - refs[5][0]).max() > 1e-2


@pytest.mark.parametrize("run", ["run_small_sampled", "run_small_fullsoftmax_nodropout"])
def test_bilm_tf_inference_outputs_all_layers(run):
    """bilm-tf's inference model on 8 sentences: tanh char CNN, 10 characters, no skip."""
    folder = BILMTF / "generated" / run
    stored = np.load(folder / "inference_lm_embeddings.npz")
    sentences = json.loads((folder / "token_loglik_sentences.json").read_text(encoding="utf-8"))
    m = elmo.load(folder / "options_inference.json", folder / "weights.hdf5")
    with torch.no_grad():
        out = m(sentences)
    mask = stored["mask"]
    assert np.array_equal(out["mask"].numpy(), mask[:, : out["mask"].shape[1]])
    word = out["word_emb"].numpy()
    ours = [np.concatenate([word, word], -1), out["lstm_outputs1"].numpy(), out["lstm_outputs2"].numpy()]
    for k in range(3):
        ref = stored["lm_embeddings"][:, k, : word.shape[1]]
        assert np.abs(ours[k] - ref)[mask[:, : word.shape[1]]].max() <= 1e-5


def _stack(out: dict, row: int, n: int) -> np.ndarray:
    word = out["word_emb"][row, :n]
    return np.stack(
        [
            torch.cat([word, word], -1).numpy(),
            out["lstm_outputs1"][row, :n].numpy(),
            out["lstm_outputs2"][row, :n].numpy(),
        ]
    )


def _run_reference(model_dir, engine="auto"):
    """Our outputs in the reference's two modes: each line alone, and batches of 4, stateful."""
    sentences = reference_sentences()
    m = elmo.load(model_dir, engine=engine)
    stateless, stateful = [], []
    with torch.no_grad():
        for s in sentences:
            stateless.append(_stack(m(tokens=[s]), 0, len(s)))
        m.stateful = True
        m.reset_state()
        for b in range(0, len(sentences), 4):
            batch = sentences[b : b + 4]
            out = m(tokens=batch)
            stateful.extend(_stack(out, j, len(s)) for j, s in enumerate(batch))
    return {"stateless": stateless, "stateful": stateful}


@pytest.mark.parametrize("engine", ["plain", "fast"])
def test_small_random_model_matches_reference(small_model_dir, engine):
    """Small size, gain 1: every layer of all 42 edge-case sentences, both modes.

    The absolute term needed beside rtol=1e-5, measured by benchmarks/numerics.py with AVX2
    and AVX-512 kernels: 6.6e-7 (plain) and 2.7e-6 (fast); 1e-5 leaves a margin of 3.7x.
    """
    ours = _run_reference(small_model_dir, engine)
    with h5py.File(REFERENCE / "small_seed1_gain1.hdf5", "r") as ref:
        for mode, outputs in ours.items():
            assert len(outputs) == len(ref[mode]) == 42
            for i, got in enumerate(outputs):
                want = ref[f"{mode}/{i}"][()]
                assert got.shape == want.shape, (mode, i)
                assert np.allclose(got, want, rtol=1e-5, atol=1e-5), (mode, i, np.abs(got - want).max())


# The full-size gain-2 reference was made on a CPU whose BLAS kernels (AVX-512) round
# differently from others, and the gain-2 model amplifies float32 rounding through its
# clipped recurrences: AllenNLP 2.10.1 itself, rerun on an AVX2 EPYC, deviates from the
# stored file by up to 1.0e-4 on a sentence alone and 4.5e-4 over ten chained stateful
# batches. So the comparison is split (measured by benchmarks/numerics.py, RESULTS.md):
#
# - the plain model, whose products are plain BLAS calls like AllenNLP's, against the
#   reference with rtol=1e-5 and the absolute term below. The absolute term needed,
#   stateless / stateful: 3.3e-5 / 4.1e-4 with AVX-512 kernels, 5.0e-5 / 6.6e-4 with AVX2
#   (the AVX2 EPYC measured the same). The bounds leave margins of 4x / 3x.
# - the fast engine, whose different summation order adds its own rounding on top, by the
#   error relative to each sentence's layers, ||ours - reference|| / ||reference||:
#   stateless / stateful 2.6e-6 / 1.7e-5 (AVX-512), 2.7e-6 / 1.9e-5 (AVX2). Its largest
#   absolute deviation, 1.7e-4 stateless, is too close to any absolute bound that the
#   plain model's would also fit, and grows with the kernels' differences.
ORIGINAL_ATOL = {"stateless": 2e-4, "stateful": 2e-3}
ORIGINAL_FAST_NORM_REL = 1e-4  # 5.3x the largest measured


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["plain", "fast"])
def test_original_random_model_matches_reference(original_model_dir, engine):
    ours = _run_reference(original_model_dir, engine)
    with h5py.File(REFERENCE / "original_seed1_gain2.hdf5", "r") as ref:
        for mode, outputs in ours.items():
            for i, got in enumerate(outputs):
                want = ref[f"{mode}/{i}"][()]
                assert got.shape == want.shape, (mode, i)
                diff = np.abs(got.astype(np.float64) - want)
                if engine == "plain":
                    assert np.allclose(got, want, rtol=1e-5, atol=ORIGINAL_ATOL[mode]), (mode, i, diff.max())
                else:
                    norm_rel = np.linalg.norm(diff) / np.linalg.norm(want)
                    assert norm_rel <= ORIGINAL_FAST_NORM_REL, (mode, i, norm_rel)


def test_token_embeddings_fixture(allennlp_module):
    """word_emb of each vocabulary word alone equals AllenNLP's token embeddings."""
    words = (ALLENNLP / "vocab_test.txt").read_text(encoding="utf-8").split("\n")
    with h5py.File(ALLENNLP / "elmo_token_embeddings.hdf5", "r") as f:
        want = f["embedding"][()]
    assert len(words) == want.shape[0]
    with torch.no_grad():
        got = allennlp_module.bilm.token_encoder(batch_to_char_ids([words])[0]).numpy()
    assert np.abs(got - want).max() <= 1e-5
