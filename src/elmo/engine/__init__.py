"""The fast inference engine: same inputs and outputs as the plain biLM, much less time.

:class:`FastBiLM` wraps a plain :class:`elmo.model.ElmoBiLM` (the readable reference it
is tested against) and is what :class:`elmo.ElmoModule` runs by default for inference
(``engine="auto"``). See :mod:`elmo.engine.bilm` for what it does differently.
"""

from elmo.engine.bilm import DEFAULT_CACHE_SIZE, FastBiLM
from elmo.engine.cache import TokenCache
from elmo.engine.precision import PRECISIONS

__all__ = ["DEFAULT_CACHE_SIZE", "PRECISIONS", "FastBiLM", "TokenCache"]
