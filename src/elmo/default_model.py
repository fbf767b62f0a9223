"""The small ELMo model this project trained and ships inside the package.

``elmo.load()`` with no arguments, ``elmo embed`` without ``--model`` and the model name
``default`` use it; it works offline. Its directory holds the released layout
(``options.json``, ``weights.hdf5``) plus the language-model head (``lm_head.hdf5``) and
``vocab.txt``, so ``elmo perplexity default`` needs no other files. ``MODEL_CARD.md`` at
the project root says how it was trained and how good it is.
"""

from __future__ import annotations

from pathlib import Path

from elmo.errors import ElmoError

__all__ = ["DEFAULT_MODEL_NAME", "default_model_dir"]

DEFAULT_MODEL_NAME = "default"
_DIRECTORY = Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME


def default_model_dir() -> Path:
    """The directory of the bundled default model; an error if the package lacks it."""
    if not (_DIRECTORY / "weights.hdf5").is_file() or not (_DIRECTORY / "options.json").is_file():
        raise ElmoError(
            f"{_DIRECTORY}: the bundled default model is missing from this installation "
            "(reinstall elmo-embeddings, or pass a model directory)"
        )
    return _DIRECTORY
