"""The names of the biLM's weights: the one table of weights.hdf5 datasets and TF variables.

Each weight has three names:

* its **dataset** in ``weights.hdf5``, as bilm-tf's ``dump_weights`` writes it:
  ``char_embed``, ``CNN/W_cnn_0``, ``CNN_high_0/W_carry``, ``CNN_proj/W_proj``,
  ``RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0`` (``B``, ``W_P_0``); direction 0 is
  forward, 1 backward;
* its **variable** in bilm-tf's training graph (its checkpoints), under the scope ``lm``:
  ``lm/CNN/W_cnn_0``, ``lm/RNN_0/rnn/multi_rnn_cell/cell_0/lstm_cell/kernel`` (``bias``,
  ``projection/kernel``), with a one-layer LSTM ``lm/RNN_0/rnn/lstm_cell/kernel``;
* its **parameter** in :class:`elmo.model.ElmoBiLM`: ``token_encoder.conv_weights.0``,
  ``forward_layers.0.kernel``, ...

:func:`weight_names` lists every weight of a configuration with all three, in file order;
:func:`dump_name` reads a variable name in any spelling found in the wild (training graph,
inference / TF Hub graph, dump) back to its dataset name. The LM head (the softmax) is
named in :data:`LM_HEAD`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from elmo.config import ElmoConfig

__all__ = [
    "CHAR_EMBED",
    "CHAR_PROJ_B",
    "CHAR_PROJ_W",
    "LM_HEAD",
    "LM_HEAD_SCOPE",
    "TRAINING_SCOPE",
    "WeightName",
    "conv_dataset",
    "dump_name",
    "highway_dataset",
    "lstm_dataset",
    "one_layer_dataset",
    "weight_names",
]

# The scope of bilm-tf's training graph.
TRAINING_SCOPE = "lm"
CHAR_EMBED = "char_embed"
# The projection of the token representation to the LSTM's width.
CHAR_PROJ_W = "CNN_proj/W_proj"
CHAR_PROJ_B = "CNN_proj/b_proj"
# Datasets and variables of the LM head start with this; they are not part of the biLM.
LM_HEAD_SCOPE = "softmax"

# LSTM leaves: the graph's name -> the dump's name.
_LSTM_LEAVES = {"kernel": "W_0", "bias": "B", "projection/kernel": "W_P_0"}
# The dump's LSTM leaf -> the parameter of elmo.model.LSTMLayer it fills.
_LSTM_PARAMETERS = {"W_0": "kernel", "B": "bias", "W_P_0": "projection"}
_DIRECTIONS = ("forward_layers", "backward_layers")


@dataclass(frozen=True)
class WeightName:
    """One weight's names: ``parameter`` (of its module), ``dataset`` (in the HDF5 file) and
    ``variable`` (in bilm-tf's training graph, without the ``lm/`` scope)."""

    parameter: str
    dataset: str
    variable: str

    def tf_name(self, scope: str = TRAINING_SCOPE) -> str:
        """The variable's full name under ``scope``, e.g. ``lm/CNN/W_cnn_0``."""
        return f"{scope}/{self.variable}" if scope else self.variable


# The LM head's weights; parameters of elmo.train.softmax.SoftmaxHead, datasets of lm_head.hdf5.
LM_HEAD = (
    WeightName("weight", f"{LM_HEAD_SCOPE}/W", f"{LM_HEAD_SCOPE}/W"),
    WeightName("bias", f"{LM_HEAD_SCOPE}/b", f"{LM_HEAD_SCOPE}/b"),
)


def conv_dataset(index: int, leaf: str = "W") -> str:
    """The dataset of char CNN filter ``index``: ``leaf`` is ``W`` (kernel) or ``b`` (bias)."""
    return f"CNN/{leaf}_cnn_{index}"


def highway_dataset(index: int, leaf: str = "W_carry") -> str:
    """The dataset of highway layer ``index``: ``leaf`` is ``W_carry``, ``b_carry``,
    ``W_transform`` or ``b_transform``."""
    return f"CNN_high_{index}/{leaf}"


def lstm_dataset(direction: int, layer: int, leaf: str) -> str:
    """The dataset of an LSTM weight: ``leaf`` is ``W_0`` (kernel), ``B`` (bias) or ``W_P_0``."""
    return f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell/{leaf}"


def one_layer_dataset(dataset: str) -> str | None:
    """The name ``dump_weights`` gives ``dataset`` in a one-layer LSTM (no ``MultiRNNCell``
    scope), or None for a dataset that is not of LSTM layer 0."""
    if "/MultiRNNCell/Cell0/" not in dataset:
        return None
    return dataset.replace("/MultiRNNCell/Cell0/", "/")


def _lstm_variable(direction: int, layer: int, leaf: str, n_layers: int) -> str:
    # bilm-tf's training graph has no multi_rnn_cell scope for a one-layer LSTM.
    cell = f"multi_rnn_cell/cell_{layer}/" if n_layers > 1 else ""
    return f"RNN_{direction}/rnn/{cell}lstm_cell/{leaf}"


def weight_names(config: ElmoConfig) -> list[WeightName]:
    """Every weight of the biLM that ``config`` describes, in the order of the released files.

    Parameters are those of :class:`elmo.model.ElmoBiLM`.
    """
    cnn, lstm = config.char_cnn, config.lstm
    names = [WeightName(f"token_encoder.{CHAR_EMBED}", CHAR_EMBED, CHAR_EMBED)]
    for i in range(len(cnn.filters)):
        for leaf, parameter in (("W", "conv_weights"), ("b", "conv_biases")):
            dataset = conv_dataset(i, leaf)
            names.append(WeightName(f"token_encoder.{parameter}.{i}", dataset, dataset))
    for k in range(cnn.n_highway):
        for leaf, parameter in (
            ("W_carry", "highway_carry_w"),
            ("b_carry", "highway_carry_b"),
            ("W_transform", "highway_transform_w"),
            ("b_transform", "highway_transform_b"),
        ):
            dataset = highway_dataset(k, leaf)
            names.append(WeightName(f"token_encoder.{parameter}.{k}", dataset, dataset))
    for dataset, parameter in ((CHAR_PROJ_W, "proj_w"), (CHAR_PROJ_B, "proj_b")):
        names.append(WeightName(f"token_encoder.{parameter}", dataset, dataset))
    for d, stack in enumerate(_DIRECTIONS):
        for layer in range(lstm.n_layers):
            for graph_leaf, leaf in _LSTM_LEAVES.items():
                names.append(
                    WeightName(
                        f"{stack}.{layer}.{_LSTM_PARAMETERS[leaf]}",
                        lstm_dataset(d, layer, leaf),
                        _lstm_variable(d, layer, graph_leaf, lstm.n_layers),
                    )
                )
    return names


# --------------------------------------------------------------------------- reading names

_ROOT = re.compile(
    r"(?:^|/)(char_embed|CNN/[Wb]_cnn_\d+|CNN_high_\d+/[Wb]_(?:carry|transform)|CNN_proj/[Wb]_proj|RNN_\d+/.+)$"
)
# The LSTM spellings: inference/hub graph, training graph (one layer: no multi_rnn_cell),
# dump_weights (one layer: no MultiRNNCell). Groups: direction, layer (empty: 0), leaf.
_LSTM_FORMS = (
    re.compile(r"RNN_(\d+)/RNN/MultiRNNCell/Cell(\d+)/rnn/lstm_cell/(kernel|bias|projection/kernel)"),
    re.compile(r"RNN_(\d+)/rnn/multi_rnn_cell/cell_(\d+)/lstm_cell/(kernel|bias|projection/kernel)"),
    re.compile(r"RNN_(\d+)/rnn/()lstm_cell/(kernel|bias|projection/kernel)"),
    re.compile(r"RNN_(\d+)/RNN/MultiRNNCell/Cell(\d+)/LSTMCell/(W_0|B|W_P_0)"),
    re.compile(r"RNN_(\d+)/RNN/()LSTMCell/(W_0|B|W_P_0)"),
)


def dump_name(tf_name: str) -> tuple[str, str] | None:
    """``(scope, weights.hdf5 name)`` of a biLM weight variable, or None for anything else.

    Any spelling is accepted, under any scope; the scope is removed as a prefix (bilm-tf's
    ``dump_weights`` uses ``lstrip('lm/')``, which strips characters). One-layer LSTM names
    get the ``MultiRNNCell/Cell0`` dataset name, which every loader reads.

    >>> dump_name("lm/RNN_1/rnn/multi_rnn_cell/cell_0/lstm_cell/projection/kernel")
    ('lm', 'RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/W_P_0')
    >>> dump_name("bilm/RNN_0/RNN/MultiRNNCell/Cell1/rnn/lstm_cell/bias")
    ('bilm', 'RNN_0/RNN/MultiRNNCell/Cell1/LSTMCell/B')
    >>> dump_name("lm/CNN/W_cnn_0/Adagrad") is None
    True
    """
    name = tf_name.removesuffix(":0")
    match = _ROOT.search(name)
    if not match:
        return None
    scope, rest = name[: match.start(1)].rstrip("/"), match.group(1)
    if not rest.startswith("RNN_"):
        return scope, rest
    for form in _LSTM_FORMS:
        m = form.fullmatch(rest)
        if m:
            direction, layer, leaf = m.groups()
            return scope, lstm_dataset(int(direction), int(layer or 0), _LSTM_LEAVES.get(leaf, leaf))
    return None
