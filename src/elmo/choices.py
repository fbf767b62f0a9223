"""The option values of the public API, as ``Literal`` types and as tuples for checking.

Each option's allowed values are written here once; the functions that take them check
them with :func:`check_choice`, which names the option and what it found.
"""

from __future__ import annotations

from typing import Literal, TypeVar, get_args

__all__ = [
    "ENGINES",
    "FILE_LAYERS",
    "LAYERS",
    "PRECISIONS",
    "STORE_DTYPES",
    "Engine",
    "FileLayers",
    "Layers",
    "Precision",
    "StoreDtype",
    "check_choice",
]

# What computes the biLM: the fast engine, the plain reference model, or the fast engine
# except while gradients must reach the biLM's parameters (``auto``, the default).
Engine = Literal["auto", "fast", "plain"]
# The arithmetic of the fast engine (its outputs are float32 in all of them).
Precision = Literal["float32", "bfloat16", "int8"]
# What :meth:`elmo.ElmoModule.embed` returns per sentence.
Layers = Literal["all", "top", "average", "elmo", "word_emb", "default"]
# What ``elmo embed`` stores per line (the layouts of the old ``allennlp elmo`` command).
FileLayers = Literal["all", "top", "average", "elmo", "default"]
# The storage type of arrays written to HDF5.
StoreDtype = Literal["float32", "float16"]

ENGINES: tuple[Engine, ...] = get_args(Engine)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
LAYERS: tuple[Layers, ...] = get_args(Layers)
FILE_LAYERS: tuple[FileLayers, ...] = get_args(FileLayers)
STORE_DTYPES: tuple[StoreDtype, ...] = get_args(StoreDtype)

T = TypeVar("T", bound=str)


def check_choice(name: str, value: object, choices: tuple[T, ...]) -> T:
    """``value`` if it is one of ``choices``; else ``ValueError`` naming the option."""
    if isinstance(value, str) and value in choices:
        return value  # type: ignore[return-value]
    raise ValueError(f"{name}: expected one of {', '.join(choices)}, found {value!r}")
