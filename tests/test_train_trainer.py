"""The trainer against bilm-tf's deterministic run, step by step, and its restart."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import BILMTF, needs_shared
from elmo.config import ElmoConfig
from elmo.train.lm import TrainingBiLM
from elmo.train.optim import Adagrad
from elmo.train.tf_import import assign_tf_variables, tf_variable_names
from elmo.train.trainer import train_step

RUN = BILMTF / "generated" / "run_small_fullsoftmax_nodropout"
pytestmark = needs_shared(RUN)

# bilm-tf ran in float32 on another CPU; the README's float64 recomputation of its
# step 1 agrees to 1.2e-7, so float32 here should too. The issue asks for losses to
# 1e-4 relative at every step and weights after step 1 to 1e-6.
LOSS_RTOL = 1e-4
STEP1_ATOL = 1e-6


def _fixture_model() -> tuple[TrainingBiLM, Adagrad, dict]:
    options = json.loads((RUN / "options.json").read_text())
    model = TrainingBiLM(ElmoConfig.from_dict(options), options["n_tokens_vocab"])
    opt = Adagrad(dict(model.named_parameters()), lr=0.2)
    return model, opt, options


def _batches(path) -> list[dict[str, torch.Tensor]]:
    z = np.load(path)
    n = z["token_ids"].shape[0]
    return [{k: torch.from_numpy(z[k][i].astype(np.int64)) for k in z.files} for i in range(n)]


def _compare_variables(model: TrainingBiLM, opt: Adagrad, expected: dict, atol: float) -> float:
    params = dict(model.named_parameters())
    worst = 0.0
    for ours, theirs in tf_variable_names(model).items():
        for got, key in ((params[ours], theirs), (opt.accumulators[ours], theirs + "/Adagrad")):
            got = got.detach().numpy()
            if ours.endswith("char_embed"):
                got = got[1:]
            diff = float(np.abs(got - expected[key]).max())
            worst = max(worst, diff)
            assert diff <= atol, f"{key}: max abs diff {diff:.2e} > {atol:.0e}"
    return worst


def _run(model, opt, options, batches, state=None):
    rows = []
    for batch in batches:
        row, state = train_step(
            model,
            opt,
            batch,
            state,
            unroll_steps=options["unroll_steps"],
            clip_norm=options["all_clip_norm_val"],
        )
        rows.append(row)
    return rows, state


def test_step_one_matches_bilm_tf():
    model, opt, options = _fixture_model()
    assign_tf_variables(model, dict(np.load(RUN / "ckpt_init_variables.npz")), opt)
    steps = json.loads((RUN / "train_steps.json").read_text())
    rows, _ = _run(model, opt, options, _batches(RUN / "train_batches.npz")[:1])
    assert rows[0]["loss"] == pytest.approx(steps[0]["total_loss"], rel=1e-6)
    assert rows[0]["grad_norm"] == pytest.approx(steps[0]["grad_global_norm_pre_clip"], rel=1e-5)
    _compare_variables(model, opt, dict(np.load(RUN / "ckpt_step1_variables.npz")), STEP1_ATOL)


def test_thirty_steps_match_bilm_tf_losses():
    model, opt, options = _fixture_model()
    assign_tf_variables(model, dict(np.load(RUN / "ckpt_init_variables.npz")), opt)
    steps = json.loads((RUN / "train_steps.json").read_text())
    rows, _ = _run(model, opt, options, _batches(RUN / "train_batches.npz"))
    assert len(rows) == len(steps) == 30
    for row, ref in zip(rows, steps):
        fwd, bwd = ref["individual_losses"]
        assert row["loss_forward"] == pytest.approx(fwd, rel=LOSS_RTOL), ref["batch_no"]
        assert row["loss_backward"] == pytest.approx(bwd, rel=LOSS_RTOL), ref["batch_no"]
        assert row["loss"] == pytest.approx(ref["total_loss"], rel=LOSS_RTOL), ref["batch_no"]
    # After 30 steps float32 rounding could compound; measured 2.4e-7 on the final weights.
    _compare_variables(model, opt, dict(np.load(RUN / "ckpt_all_variables.npz")), 1e-5)


def test_restart_from_checkpoint_30_matches_bilm_tf():
    """bilm-tf's restart: weights and accumulators of ckpt-30, zero state, data from the start."""
    model, opt, options = _fixture_model()
    step = assign_tf_variables(model, dict(np.load(RUN / "ckpt_all_variables.npz")), opt)
    assert step == 30
    ref = json.loads((RUN / "restart" / "restart.json").read_text())["restart"]["steps"]
    rows, _ = _run(model, opt, options, _batches(RUN / "train_batches.npz")[:6])
    for row, r in zip(rows, ref):
        assert row["loss"] == pytest.approx(r["total_loss"], rel=LOSS_RTOL)
    _compare_variables(model, opt, dict(np.load(RUN / "restart" / "restart_final_variables.npz")), 1e-5)
