"""``elmo.load``: from a model source (see :mod:`elmo.resolve`) to a model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from elmo.config import ElmoConfig
from elmo.engine import DEFAULT_CACHE_SIZE
from elmo.model import ElmoBiLM
from elmo.module import ElmoModule
from elmo.resolve import ModelFiles, find_model_files, resolve
from elmo.runner import EngineOptions
from elmo.weights import load_weights

__all__ = ["find_model_files", "load", "load_bilm", "load_bilm_files"]

PathLike = str | os.PathLike[str]


def load_bilm(
    options: PathLike | ElmoConfig | dict, weights: PathLike, device: str | torch.device | None = None
) -> ElmoBiLM:
    """The plain biLM from an options file (or config) and an HDF5 weight file, in eval mode."""
    if isinstance(options, ElmoConfig):
        config = options
    elif isinstance(options, dict):
        config = ElmoConfig.from_dict(options)
    else:
        if not Path(options).is_file():
            raise FileNotFoundError(f"{os.fspath(options)}: options file not found")
        config = ElmoConfig.from_json(options)
    bilm = ElmoBiLM(config)
    load_weights(bilm, weights)
    if device is not None:
        bilm.to(device)
    return bilm.eval()


def load_bilm_files(files: ModelFiles, device: str | torch.device | None = None) -> ElmoBiLM:
    """The plain biLM of resolved model files, whatever their format."""
    if files.format == "hdf5":
        assert files.options is not None
        return load_bilm(files.options, files.weights, device)
    if files.format == "hub":
        from elmo.convert import convert_hub_module

        # The module's variables, in the released layout, through a temporary directory.
        with tempfile.TemporaryDirectory(prefix="elmo-hub-") as tmp:
            out = Path(tmp) / "model"
            convert_hub_module(files.weights, out)
            return load_bilm(out / "options.json", out / "weights.hdf5", device)
    from elmo.train.models import load_language_model

    bilm = load_language_model(files).model.encoder
    if device is not None:
        bilm.to(device)
    return bilm.eval()


def load(
    options: PathLike | None = None,
    weights: PathLike | None = None,
    *,
    stateful: bool = False,
    finetune: bool = False,
    device: str | torch.device | None = None,
    engine: str = "auto",
    precision: str | None = None,
    cache_size: int = DEFAULT_CACHE_SIZE,
    dtype: str | None = None,
    progress: bool | None = None,
) -> ElmoModule:
    """Load an ELMo model with the TF Hub module's interface.

    ``load()`` (or ``load("default")``) for the small model bundled with the package;
    ``load("small")`` for a released model by name (downloaded once into a cache: see
    :mod:`elmo.download`); ``load("options.json", "weights.hdf5")`` (paths or URLs);
    ``load("model_dir")`` for a directory holding both; also a training run directory,
    a bilm-tf checkpoint directory or a TF Hub module directory (see :mod:`elmo.resolve`).
    ``stateful=True`` carries LSTM state between calls (reproducing AllenNLP and
    bilm-tf); ``finetune=True`` makes the whole biLM trainable.

    ``engine``: ``"auto"`` (default; the fast engine for inference, the plain model while
    fine-tuning), ``"fast"`` or ``"plain"`` (the readable reference model).
    ``precision``: the fast engine's arithmetic, ``"float32"`` (default), ``"bfloat16"``
    or ``"int8"`` (CPU only); outputs are float32 whatever it is (``dtype`` is its
    deprecated old name). ``cache_size``: distinct tokens whose representations the fast
    engine keeps (0: no cache). ``progress``: how a download reports (``None``: a bar on
    a terminal, ``False``: silent).
    """
    options_of_engine = EngineOptions.from_keywords(engine, precision, cache_size, dtype=dtype)
    bilm = load_bilm_files(resolve(options, weights, progress=progress), device)
    module = ElmoModule(bilm, stateful=stateful, finetune=finetune, engine_options=options_of_engine)
    if device is not None:
        module.to(device)
    return module.eval()
