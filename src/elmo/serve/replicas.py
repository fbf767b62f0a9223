"""``elmo serve --ray``: the service of :mod:`elmo.serve.app` as a Ray Serve deployment.

Each of N replicas (Ray actors, on any machine of the cluster) loads its own model and runs
the FastAPI application of :func:`elmo.serve.app.create_app` with its own batcher; Ray
Serve's HTTP proxy listens on ``--host``/``--port`` and spreads requests over the replicas.
Needs ``pip install "elmo-embeddings[ray]"`` (Ray Serve) besides the ``serve`` extra.

Ray is imported when a function here is called, never by ``import elmo``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from elmo.errors import ElmoError, MissingExtraError

if TYPE_CHECKING:
    from elmo.ray import ModelSource
    from elmo.serve.app import ServeSettings

__all__ = ["serve_on_ray"]

_EXTRA = 'pip install "elmo-embeddings[ray]"'
APP_NAME = "elmo"


def _import_serve() -> Any:
    try:
        import ray
        import ray.serve
    except ImportError as e:
        raise MissingExtraError(f"elmo serve --ray needs Ray Serve ({e.name} is missing): {_EXTRA}") from None
    return ray


class _Replica:
    """One replica: a model and the application around it (built by Ray Serve on the actor)."""

    def __init__(
        self, model: Any, engine: dict[str, Any], threads: int, settings: dict[str, Any], name: str
    ) -> None:
        from elmo.ray import _load_model

        self._module = _load_model(model, engine, threads)
        self._settings = settings
        self._name = name

    def __serve_build_asgi_app__(self) -> Any:
        from elmo.serve.app import ServeSettings, create_app

        return create_app(self._module, ServeSettings(**self._settings), model_name=self._name)


def serve_on_ray(
    model: ModelSource,
    engine: dict[str, Any],
    settings: ServeSettings,
    *,
    name: str,
    address: str | None,
    replicas: int,
    threads: int,
    host: str,
    port: int,
) -> None:
    """Run ``replicas`` copies of the service on Ray until SIGTERM or SIGINT, then shut Ray
    Serve down (and the Ray this call started, when ``address`` is ``None``). Call it from
    the main thread."""
    ray = _import_serve()
    from ray import serve

    stop = threading.Event()

    started = not ray.is_initialized()
    if started:
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address is None:
            ray.init(num_cpus=replicas * threads, include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    # after ray.init, which puts its own SIGTERM handler (exit at once) in place
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        # Each replica's batcher merges its requests and refuses with 429 when its queue is
        # full: Serve lets through more than that queue (its default is 5 at a time), with
        # room for the requests in the model call and the GET endpoints. Serve's own queue in
        # front of the replicas (requests not yet given to one) holds as many again, and
        # answers 503 past that instead of holding any number of requests. On shutdown a
        # replica finishes the requests it holds (up to a minute) before it goes.
        per_replica = settings.max_queue + 64
        deployment = serve.deployment(
            name="ElmoService",
            num_replicas=replicas,
            ray_actor_options={"num_cpus": threads},
            max_ongoing_requests=per_replica,
            max_queued_requests=per_replica * replicas,
            graceful_shutdown_timeout_s=60,
        )(serve.ingress()(_Replica))
        try:
            serve.run(
                deployment.bind(model, engine, threads, asdict(settings), name),
                name=APP_NAME,
                route_prefix="/",
            )
        except RuntimeError as e:  # a replica failed in its constructor (the model)
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise ElmoError(
                f"elmo serve --ray: the replicas did not start ({reason}); "
                "their errors are in the serve logs of the Ray session"
            ) from None
        # A signal may reach any thread of the process: the main thread runs its handler
        # only when it runs Python code, hence the polling.
        while not stop.wait(0.2):
            pass
    finally:
        # The application first: its replicas finish the requests they hold while the proxy
        # is still up to deliver the answers (and answers new ones with 503 or 404);
        # serve.shutdown alone takes the proxy down with them. An application that never
        # deployed (a replica failed to start) has nothing to drain.
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)
        try:
            serve.shutdown()
        finally:
            if started:
                ray.shutdown()
