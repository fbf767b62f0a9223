"""``elmo.load``: from an options file and a weight file (or a directory) to a model."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from elmo.config import ElmoConfig
from elmo.default_model import DEFAULT_MODEL_NAME, default_model_dir
from elmo.download import download_model, is_model_name, not_found_message
from elmo.engine import DEFAULT_CACHE_SIZE
from elmo.model import ElmoBiLM
from elmo.module import ElmoModule
from elmo.weights import load_weights

__all__ = ["find_model_files", "load", "load_bilm"]

PathLike = str | os.PathLike[str]


def find_model_files(directory: PathLike) -> tuple[Path, Path]:
    """The options and weight files of a model directory.

    ``options.json`` and ``weights.hdf5`` are preferred; otherwise the directory must
    hold exactly one ``*.json`` and one ``*.hdf5`` (the released files are named like
    ``elmo_2x4096_512_2048cnn_2xhighway_options.json``).
    """
    directory = Path(directory)
    found = []
    for preferred, pattern in (("options.json", "*.json"), ("weights.hdf5", "*.hdf5")):
        if (directory / preferred).is_file():
            found.append(directory / preferred)
            continue
        candidates = sorted(p for p in directory.glob(pattern) if p.is_file())
        if len(candidates) != 1:
            what = "none" if not candidates else ", ".join(p.name for p in candidates)
            raise FileNotFoundError(
                f"{directory}: expected {preferred} (or exactly one {pattern} file), found {what}"
            )
        found.append(candidates[0])
    return found[0], found[1]


def load_bilm(
    options: PathLike | ElmoConfig | dict, weights: PathLike, device: str | torch.device | None = None
) -> ElmoBiLM:
    """The plain biLM with its weights, in eval mode."""
    if isinstance(options, ElmoConfig):
        config = options
    elif isinstance(options, dict):
        config = ElmoConfig.from_dict(options)
    else:
        config = ElmoConfig.from_json(options)
    bilm = ElmoBiLM(config)
    load_weights(bilm, weights)
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
    dtype: str = "float32",
    cache_size: int = DEFAULT_CACHE_SIZE,
) -> ElmoModule:
    """Load an ELMo model with the TF Hub module's interface.

    ``load("options.json", "weights.hdf5")`` or ``load("model_dir")`` for a directory
    holding both, or ``load("small")`` for a released model by name (downloaded once into
    a cache: see :mod:`elmo.download`); ``load()`` (or ``load("default")``) for the small
    model bundled with the package. ``stateful=True`` carries LSTM state between
    calls (reproducing AllenNLP and bilm-tf); ``finetune=True`` makes the whole biLM
    trainable.

    ``engine``: ``"auto"`` (default; the fast engine for inference, the plain model while
    fine-tuning), ``"fast"`` or ``"plain"`` (the readable reference model). ``dtype``:
    the fast engine's precision, ``"float32"``, ``"bfloat16"`` or ``"int8"`` (CPU only);
    outputs are float32 whatever it is. ``cache_size``: distinct tokens whose
    representations the fast engine keeps (0: no cache).
    """
    if options is None or (str(options) == DEFAULT_MODEL_NAME and not Path(options).exists()):
        if weights is not None:
            raise TypeError("load(weights=...) needs the options too: load('options.json', 'weights.hdf5')")
        options = default_model_dir()
    if weights is None:
        path = Path(options)
        if not path.exists() and is_model_name(options):
            path = download_model(str(options))
        if not path.is_dir():
            if path.suffix in (".hdf5", ".h5"):
                raise TypeError(
                    f"{path}: this is a weight file; pass the options too: load(options, '{path}')"
                )
            if not path.exists():
                raise FileNotFoundError(not_found_message(options))
            raise TypeError(f"{path}: pass the weights too (load(options, weights)) or a model directory")
        options, weights = find_model_files(path)
    bilm = load_bilm(options, weights, device)
    module = ElmoModule(
        bilm, stateful=stateful, finetune=finetune, engine=engine, dtype=dtype, cache_size=cache_size
    )
    if device is not None:
        module.to(device)
    return module.eval()
