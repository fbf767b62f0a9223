"""``elmo serve``: an HTTP embedding service that batches across requests.

- :mod:`elmo.serve.batcher`: micro-batching of requests on an inference thread (no HTTP);
- :mod:`elmo.serve.planning`: how a batch is cut into model calls;
- :mod:`elmo.serve.formats`: the answers' formats (JSON, ``.npy``, Arrow IPC);
- :mod:`elmo.serve.metrics`: the Prometheus text of ``GET /metrics``;
- :mod:`elmo.serve.app`: the FastAPI application (needs ``pip install "elmo-embeddings[serve]"``).
- :mod:`elmo.serve.replicas`: the application as a Ray Serve deployment (``elmo serve --ray``,
  needs ``pip install "elmo-embeddings[ray]"`` too).

Importing this package imports neither FastAPI nor uvicorn.
"""

from __future__ import annotations

import importlib

from elmo.errors import MissingExtraError

__all__ = ["require_serve_extra"]


def require_serve_extra() -> None:
    """Raise :class:`~elmo.errors.MissingExtraError` (one line naming the extra) unless
    FastAPI, uvicorn and pyarrow (for Arrow answers) can be imported."""
    for name in ("fastapi", "uvicorn", "pyarrow"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise MissingExtraError(
                f'elmo serve needs {name}, which is not installed: pip install "elmo-embeddings[serve]" ({e})'
            ) from None
