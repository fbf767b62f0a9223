"""Every exception this package raises about its inputs, in one place.

All derive from :class:`ElmoError`, so ``except ElmoError`` catches any of them; most are
also :class:`ValueError` (a bad file or argument), :class:`DownloadError` is an
:class:`OSError`. Messages name the file, the field and the expected and found value.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConvertError",
    "CorpusError",
    "DataError",
    "DownloadError",
    "ElmoError",
    "EmbedFileError",
    "MissingExtraError",
    "ModelError",
    "TFCheckpointError",
    "TFImportError",
    "TrainError",
    "VocabEmbeddingsError",
    "VocabularyError",
    "WeightsError",
]


class ElmoError(Exception):
    """Base class of the errors this package raises about its inputs."""


# --------------------------------------------------------------------------- models
class ConfigError(ElmoError, ValueError):
    """An options file (or options dictionary) that cannot describe an ELMo model."""


class WeightsError(ElmoError, ValueError):
    """A weight file that is missing, unreadable or inconsistent with the options."""


class DownloadError(ElmoError, OSError):
    """A released model that could not be downloaded, or whose download is not valid."""


class ConvertError(ElmoError, ValueError):
    """A checkpoint that cannot be converted: missing variables, wrong shapes, bad output."""


class TFCheckpointError(ElmoError, ValueError):
    """A TensorFlow checkpoint that is missing, truncated, corrupt or not supported."""


# --------------------------------------------------------------------------- embedding
class EmbedFileError(ElmoError):
    """A problem with the input, the output or an interrupted run, stated for the user."""


class CorpusError(ElmoError, ValueError):
    """``elmo embed-corpus``: an input that cannot be read, or an output folder in the way."""


class VocabEmbeddingsError(ElmoError, ValueError):
    """A vocabulary file or an output path that cannot be used, stated for the user."""


# --------------------------------------------------------------------------- training
class VocabularyError(ElmoError, ValueError):
    """A vocabulary file or word list that bilm-tf's ``Vocabulary`` cannot use."""


class DataError(ElmoError, ValueError):
    """Training or evaluation text that cannot be found or read as bilm-tf reads it."""


class TrainError(ElmoError, ValueError):
    """A training run that cannot start or continue as asked."""


class CheckpointError(ElmoError, ValueError):
    """A training checkpoint that is missing, corrupt or does not fit the run."""


class TFImportError(ElmoError, ValueError):
    """A bilm-tf checkpoint that does not fit the model its options describe."""


class ModelError(ElmoError, ValueError):
    """A language model that cannot be found or read."""


# --------------------------------------------------------------------------- command line
class UsageError(ElmoError):
    """A command line that contradicts itself or gives an impossible value (exit status 2)."""


class ConfigurationError(ElmoError, ValueError):
    """What AllenNLP raises as ``ConfigurationError`` (a contradictory ``Elmo`` construction,
    a wrong number of mix parameters, an input file ``ElmoEmbedder.embed_file`` refuses), so
    that ``except ConfigurationError`` from ``elmo.allennlp`` catches the same cases."""


class MissingExtraError(ElmoError, ImportError):
    """An optional dependency group (``pip install "elmo-embeddings[EXTRA]"``) that is not installed."""
