"""Reading and writing the released ELMo weight layout (``weights.hdf5``).

The layout is bilm-tf's ``dump_weights`` output, which AllenNLP also reads:

==============================================  ===========================================
``char_embed``                                  (261, emb): ids 1..261; the loader adds row 0
``CNN/W_cnn_{i}``, ``CNN/b_cnn_{i}``            (1, width, emb, num), (num,)
``CNN_high_{k}/W_carry|W_transform``            (F, F); ``b_carry|b_transform`` (F,)
``CNN_proj/W_proj``, ``CNN_proj/b_proj``        (F, P), (P,)
``RNN_{d}/RNN/MultiRNNCell/Cell{l}/LSTMCell/``  ``W_0`` (in + P, 4H), ``B`` (4H,),
                                                ``W_P_0`` (H, P); d 0 forward, 1 backward
==============================================  ===========================================

All matrices are ``y = x @ W + b``; gates i, j, f, o; the forget bias +1 is not stored.
Loading checks every dataset against the options before reading anything and reads
straight into the model's parameters, so memory stays near the file size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch

from elmo.atomic import atomic_path
from elmo.config import ElmoConfig
from elmo.errors import WeightsError
from elmo.files import check_regular_file
from elmo.model import ElmoBiLM
from elmo.names import CHAR_EMBED, LM_HEAD_SCOPE, one_layer_dataset, weight_names

__all__ = ["check_weights", "dataset_layout", "load_weights", "save_weights"]


def _shape_options(config: ElmoConfig, parameter: str) -> str:
    """The options that fix the shape of an :class:`ElmoBiLM` parameter, for error messages."""
    cnn, lstm = config.char_cnn, config.lstm
    width = f"sum of char_cnn.filters widths={cnn.n_filters}"
    proj = f"lstm.projection_dim={lstm.projection_dim}"
    owner, _, rest = parameter.partition(".")
    if owner != "token_encoder":  # forward_layers.{l}.kernel|bias|projection
        return f"lstm.dim={lstm.dim}" if rest.endswith(".bias") else f"lstm.dim={lstm.dim}, {proj}"
    attribute, _, index = rest.partition(".")
    if attribute == "char_embed":
        return f"char_cnn.embedding.dim={cnn.embedding_dim}"
    if attribute in ("conv_weights", "conv_biases"):
        i = int(index)
        return f"char_cnn.filters[{i}]={list(cnn.filters[i])}, char_cnn.embedding.dim={cnn.embedding_dim}"
    if attribute == "proj_w":
        return f"{width}, {proj}"
    if attribute == "proj_b":
        return proj
    return width  # the highway layers


def dataset_layout(bilm: ElmoBiLM) -> Iterator[tuple[str, torch.Tensor, str]]:
    """Each dataset name with the tensor it fills and the options that fix its shape.

    The names come from :func:`elmo.names.weight_names`. The tensor is a view of the
    model's parameter (``char_embed`` skips the zero row 0), so reading into it loads the
    model in place.
    """
    for weight in weight_names(bilm.config):
        tensor = bilm.get_parameter(weight.parameter).data
        if weight.dataset == CHAR_EMBED:
            tensor = tensor[1:]
        yield weight.dataset, tensor, _shape_options(bilm.config, weight.parameter)


def _list_datasets(h5: h5py.File) -> dict[str, h5py.Dataset]:
    found: dict[str, h5py.Dataset] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    h5.visititems(visit)
    return found


def _alias(name: str, datasets: dict[str, h5py.Dataset], n_layers: int) -> str:
    # bilm-tf dumps a one-layer LSTM without the MultiRNNCell scope.
    if n_layers == 1 and name not in datasets:
        short = one_layer_dataset(name)
        if short is not None and short in datasets:
            return short
    return name


def _open(path: Path) -> h5py.File:
    check_regular_file(path, "weight file", WeightsError)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(
            f"{path}: cannot read as HDF5 (not an HDF5 file, or truncated or corrupt): {e}"
        ) from None


# What h5py raises for a file whose structure (not its values) is damaged: its messages
# ("Object visitation failed (bad symbol table node signature)") do not name the file.
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


def _read_plan(h5: h5py.File, bilm: ElmoBiLM, path: Path) -> list[tuple[str, h5py.Dataset, torch.Tensor]]:
    """Each stored dataset with the tensor it fills, after checking names, shapes and dtypes."""
    try:
        return _plan(h5, bilm, path)
    except _H5_ERRORS as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"{path}: cannot read the HDF5 structure (corrupt file?): {e}") from None


def _plan(h5: h5py.File, bilm: ElmoBiLM, path: Path) -> list[tuple[str, h5py.Dataset, torch.Tensor]]:
    datasets = _list_datasets(h5)
    layout = list(dataset_layout(bilm))
    n_layers = bilm.config.lstm.n_layers
    used: set[str] = set()
    plan = []
    for name, target, why in layout:
        stored = _alias(name, datasets, n_layers)
        if stored not in datasets:
            raise WeightsError(
                f"{path}: missing dataset '{name}' (expected shape {tuple(target.shape)} from "
                f"the options: {why})"
            )
        ds = datasets[stored]
        used.add(stored)
        if ds.shape != tuple(target.shape):
            raise WeightsError(
                f"{path}: dataset '{stored}': expected shape {tuple(target.shape)} "
                f"(from the options: {why}), found {ds.shape}; do the options belong to "
                "these weights?"
            )
        if ds.dtype.kind != "f":
            raise WeightsError(f"{path}: dataset '{stored}': expected float32 values, found dtype {ds.dtype}")
        plan.append((stored, ds, target))
    # The LM head's datasets may share the file; they are not the embedder's.
    extra = sorted(n for n in datasets if n not in used and not n.startswith(LM_HEAD_SCOPE))
    if extra:
        listed = ", ".join(f"'{n}' {datasets[n].shape}" for n in extra[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise WeightsError(
            f"{path}: dataset {listed}{more} not described by the options "
            f"(lstm.n_layers={n_layers}, char_cnn.n_highway={bilm.config.char_cnn.n_highway}, "
            f"{len(bilm.config.char_cnn.filters)} char_cnn.filters); "
            "do the options belong to these weights?"
        )
    return plan


def check_weights(model: ElmoBiLM | ElmoConfig, path: str | os.PathLike[str]) -> None:
    """Check a weight file against the options without reading any values.

    Raises the :class:`~elmo.errors.WeightsError` that :func:`load_weights` would raise
    before reading (file, dataset names, shapes, dtypes). Given a config, the model is
    built on the meta device, so no memory is allocated for the weights.
    """
    if isinstance(model, ElmoConfig):
        with torch.device("meta"):
            model = ElmoBiLM(model)
    path = Path(path)
    with _open(path) as h5:
        _read_plan(h5, model, path)


def load_weights(bilm: ElmoBiLM, path: str | os.PathLike[str]) -> None:
    """Fill ``bilm``'s parameters from a weight file, validating it against the options.

    Raises :class:`~elmo.errors.WeightsError` naming the file, the dataset, and the
    expected and found shape or type, for: a missing or unreadable file, a file that is
    not HDF5 or is truncated, a missing or unexpected dataset, a wrong shape, a
    non-float dtype, and non-finite values.
    """
    path = Path(path)
    with _open(path) as h5:
        for name, ds, target in _read_plan(h5, bilm, path):
            dest = target.numpy() if target.device.type == "cpu" else np.empty(target.shape, np.float32)
            try:
                if ds.size:
                    ds.read_direct(dest)
            except _H5_ERRORS as e:
                raise WeightsError(f"{path}: dataset '{name}': cannot read values ({e})") from None
            if not np.isfinite(dest).all():
                raise WeightsError(f"{path}: dataset '{name}': contains NaN or infinite values")
            if target.device.type != "cpu":
                target.copy_(torch.from_numpy(dest))


def save_weights(bilm: ElmoBiLM, path: str | os.PathLike[str]) -> None:
    """Write ``bilm``'s parameters in the released layout, atomically.

    The result loads with this package, AllenNLP and bilm-tf's inference code.
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for name, tensor, _ in dataset_layout(bilm):
            h5.create_dataset(name, data=tensor.detach().to("cpu", torch.float32).numpy())
