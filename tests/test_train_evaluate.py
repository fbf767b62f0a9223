"""Perplexity and log-likelihoods against bilm-tf's run_test and stored per-token scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import BILMTF, needs_shared
from elmo.config import ElmoConfig
from elmo.train.evaluate import perplexity, sentence_log_probs
from elmo.train.lm import TrainingBiLM
from elmo.train.tf_import import assign_tf_variables
from elmo.train.vocab import Vocabulary

GENERATED = BILMTF / "generated"
RUNS = ["run_small_sampled", "run_small_fullsoftmax_nodropout"]
DATA = BILMTF / "train" / "data.txt"
VOCAB = BILMTF / "train" / "vocab.txt"
pytestmark = needs_shared(BILMTF)


def _model(run: str) -> TrainingBiLM:
    options = json.loads((GENERATED / run / "options.json").read_text())
    model = TrainingBiLM(ElmoConfig.from_dict(options), options["n_tokens_vocab"])
    assign_tf_variables(model, dict(np.load(GENERATED / run / "ckpt_all_variables.npz")))
    return model.eval()


def _sentences() -> list[list[str]]:
    return [line.split() for line in DATA.read_text().splitlines()]


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_perplexity_matches_run_test_batch_size_1(run, chunk):
    ref = json.loads((GENERATED / run / "results.json").read_text())["test_batch_size_1"]
    result = perplexity(
        _model(run), Vocabulary.from_file(VOCAB), _sentences(), chunk_tokens=chunk, keep_token_losses=True
    )
    assert result.tokens == ref["n_tokens_scored_per_direction"] == 139
    assert result.combined == pytest.approx(ref["perplexity_run_test"], rel=1e-5)
    assert result.forward == pytest.approx(ref["perplexity_forward"], rel=1e-5)
    assert result.backward == pytest.approx(ref["perplexity_backward"], rel=1e-5)
    per_token = np.load(GENERATED / run / "test_losses_bs1.npy")
    np.testing.assert_allclose(result.token_losses, per_token, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("run", RUNS)
def test_stateless_token_log_likelihoods(run):
    model = _model(run)
    vocab = Vocabulary.from_file(VOCAB)
    ref = np.load(GENERATED / run / "token_loglik.npz")
    sentences = json.loads((GENERATED / run / "token_loglik_sentences.json").read_text())
    for i, sentence in enumerate(sentences):
        got = sentence_log_probs(model, vocab, sentence.split())
        for direction in ("forward", "backward"):
            np.testing.assert_allclose(
                got[direction].numpy(), ref[f"s{i}_{direction}_logprob_target"], rtol=0, atol=1e-5
            )
            np.testing.assert_allclose(
                got[direction + "_full"].numpy(), ref[f"s{i}_{direction}_logprob_full"], rtol=0, atol=1e-5
            )


@pytest.mark.parametrize("run", RUNS)
def test_cli_perplexity_of_bilm_tf_checkpoint_at_any_batch_size(run, capsys):
    """`elmo perplexity` reads the TF checkpoint itself (no TensorFlow) via its state file."""
    from elmo.cli import main

    ref = json.loads((GENERATED / run / "results.json").read_text())["test_batch_size_1"]
    for batch_size in ("1", "5", "256"):
        args = ["perplexity", str(GENERATED / run / "checkpoint"), "--vocab", str(VOCAB), "--data", str(DATA)]
        assert main([*args, "--batch-size", batch_size, "--quiet"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["combined"] == pytest.approx(ref["perplexity_run_test"], rel=1e-5)
        assert result["forward"] == pytest.approx(ref["perplexity_forward"], rel=1e-5)
        assert result["backward"] == pytest.approx(ref["perplexity_backward"], rel=1e-5)
        assert result["tokens"] == 139


def test_cli_perplexity_errors(tmp_path, capsys):
    from elmo.cli import main

    ckpt = str(GENERATED / RUNS[0] / "checkpoint")
    assert main(["perplexity", ckpt, "--data", str(DATA), "--quiet"]) == 1
    assert "has no vocab.txt; pass --vocab" in capsys.readouterr().err
    assert main(["perplexity", ckpt, "--vocab", str(VOCAB), "--data", str(tmp_path / "nothing*")]) == 1
    assert "nothing*" in capsys.readouterr().err
    small_vocab = tmp_path / "vocab.txt"
    small_vocab.write_text("<S>\n</S>\n<UNK>\nthe\n")
    assert main(["perplexity", ckpt, "--vocab", str(small_vocab), "--data", str(DATA), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{small_vocab}: the vocabulary has 4 words but the softmax of {ckpt} has 32 rows" in err
    assert main(["perplexity", str(tmp_path), "--vocab", str(VOCAB), "--data", str(DATA)]) == 1
    assert "not a model" in capsys.readouterr().err
