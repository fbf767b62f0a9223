"""The one table of weight names (elmo.names): weights.hdf5 datasets, TF variables, parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import BILMTF, needs_shared, tiny_model
from elmo.config import ElmoConfig
from elmo.model import ElmoBiLM
from elmo.names import LM_HEAD, TRAINING_SCOPE, dump_name, one_layer_dataset, weight_names

RUN = BILMTF / "generated" / "run_small_fullsoftmax_nodropout"


def _config(n_layers: int = 2) -> ElmoConfig:
    """The generated tiny model's options (bilm-tf's run when comparing with its checkpoint)."""
    options = json.loads((tiny_model() / "options.json").read_text(encoding="utf-8"))
    options["lstm"]["n_layers"] = n_layers
    return ElmoConfig.from_dict(options)


def _run_config() -> ElmoConfig:
    return ElmoConfig.from_dict(json.loads((RUN / "options.json").read_text(encoding="utf-8")))


@pytest.mark.parametrize(
    ("tf_name", "expected"),
    [
        ("lm/char_embed", ("lm", "char_embed")),
        ("lm/CNN/W_cnn_3", ("lm", "CNN/W_cnn_3")),
        ("lm/CNN_high_1/W_carry", ("lm", "CNN_high_1/W_carry")),
        ("lm/CNN_proj/b_proj:0", ("lm", "CNN_proj/b_proj")),
        (
            "lm/RNN_1/rnn/multi_rnn_cell/cell_0/lstm_cell/kernel",
            ("lm", "RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/W_0"),
        ),
        (
            "lm/RNN_0/rnn/multi_rnn_cell/cell_1/lstm_cell/projection/kernel",
            ("lm", "RNN_0/RNN/MultiRNNCell/Cell1/LSTMCell/W_P_0"),
        ),
        ("lm/RNN_0/rnn/lstm_cell/bias", ("lm", "RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/B")),
        (
            "bilm/RNN_1/RNN/MultiRNNCell/Cell1/rnn/lstm_cell/kernel",
            ("bilm", "RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_0"),
        ),
        ("module/bilm/CNN/b_cnn_0", ("module/bilm", "CNN/b_cnn_0")),
        ("RNN_0/RNN/LSTMCell/W_P_0", ("", "RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_P_0")),
        ("RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/B", ("", "RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/B")),
        # lstrip('lm/') would have eaten the "m" of "model" and the "l" of "lstm".
        ("model/CNN/W_cnn_0", ("model", "CNN/W_cnn_0")),
        ("lm/CNN/W_cnn_0/Adagrad", None),
        ("lm/RNN_0/rnn/multi_rnn_cell/cell_0/lstm_cell/kernel/Adagrad", None),
        ("lm/softmax/W", None),
        ("global_step", None),
        ("aggregation/weights", None),
        ("bilm/RNN_0/Variable", None),
    ],
)
def test_dump_name(tf_name, expected):
    assert dump_name(tf_name) == expected


@pytest.mark.parametrize("n_layers", [1, 2])
def test_weight_names_cover_every_parameter_once(n_layers):
    config = _config(n_layers)
    names = weight_names(config)
    assert sorted(w.parameter for w in names) == sorted(n for n, _ in ElmoBiLM(config).named_parameters())
    assert len({w.dataset for w in names}) == len({w.variable for w in names}) == len(names)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_variable_names_read_back_to_their_datasets(n_layers):
    for w in weight_names(_config(n_layers)):
        assert dump_name(w.tf_name()) == (TRAINING_SCOPE, w.dataset)
    assert [dump_name(w.tf_name()) for w in LM_HEAD] == [None, None]  # not the biLM's


@needs_shared(RUN)
def test_variable_names_are_bilm_tf_checkpoint_names():
    """Every name the table gives is in bilm-tf's checkpoint, and every trainable one is named."""
    stored = set(np.load(RUN / "ckpt_init_variables.npz").files)
    ours = {w.tf_name() for w in [*weight_names(_run_config()), *LM_HEAD]}
    assert ours <= stored
    assert {n for n in stored if not n.endswith("/Adagrad") and n.startswith("lm/")} == ours


def test_one_layer_dataset():
    assert one_layer_dataset("RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/W_P_0") == "RNN_1/RNN/LSTMCell/W_P_0"
    assert one_layer_dataset("RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_P_0") is None
    assert one_layer_dataset("CNN/W_cnn_0") is None
