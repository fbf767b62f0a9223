"""ELMo deep contextualized word representations in PyTorch.

>>> import elmo
>>> m = elmo.load("options.json", "weights.hdf5")
>>> out = m(["the cat sat", "hello"])
>>> out["elmo"].shape  # [batch, tokens, 2 * projection]
"""

from elmo.config import CharCNNConfig, ElmoConfig, LSTMConfig
from elmo.corpus import read_embeddings
from elmo.errors import ConfigError, ElmoError, WeightsError
from elmo.loading import load, load_bilm
from elmo.model import ElmoBiLM
from elmo.module import ElmoModule

__version__ = "0.1.0"

__all__ = [
    "CharCNNConfig",
    "ConfigError",
    "ElmoBiLM",
    "ElmoConfig",
    "ElmoError",
    "ElmoModule",
    "LSTMConfig",
    "WeightsError",
    "load",
    "load_bilm",
    "read_embeddings",
]
