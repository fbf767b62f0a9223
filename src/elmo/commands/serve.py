"""``elmo serve``: the embedding service over HTTP (see :mod:`elmo.serve.app`).

One model per worker process, inference on a thread of its own, requests merged into
batches by a token budget and a maximum wait. ``SIGTERM`` stops accepting connections,
finishes the requests in flight, then exits with status 0. Needs the ``serve`` extra
(``pip install "elmo-embeddings[serve]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from dataclasses import asdict
from typing import TYPE_CHECKING

from elmo.commands._model import add_engine_args, add_model_args, load_model
from elmo.errors import UsageError

if TYPE_CHECKING:
    from elmo.serve.app import ServeSettings

__all__ = ["HELP", "configure", "run"]

HELP = "serve embeddings over HTTP, batching requests together"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo serve``."""
    add_model_args(parser)
    add_engine_args(parser)
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    g.add_argument(
        "--workers", type=int, default=1, help="worker processes, each with its own model (default: 1)"
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: the CPU cores divided among the workers)",
    )
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="local|ADDRESS",
        help="serve as a Ray Serve deployment: on a new Ray on this machine (local, the default "
        'value) or on the cluster at ADDRESS host:port; needs pip install "elmo-embeddings[ray]"',
    )
    g.add_argument(
        "--replicas", type=int, default=1, help="with --ray: replicas, each with its own model (default: 1)"
    )
    g.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    b = parser.add_argument_group("batching and limits")
    b.add_argument(
        "--max-batch-tokens",
        type=int,
        default=16384,
        help="most tokens merged into one batch, and queued tokens at which a batch starts "
        "without waiting (default: 16384)",
    )
    b.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="how long a request may wait for others to fill its batch (default: 10)",
    )
    b.add_argument(
        "--max-queue", type=int, default=256, help="requests waiting before 429 is answered (default: 256)"
    )
    b.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="largest request body (default: 1048576)"
    )
    b.add_argument("--max-sentences", type=int, default=256, help="sentences per request (default: 256)")
    b.add_argument("--max-tokens", type=int, default=512, help="tokens per sentence (default: 512)")


def _settings(args: argparse.Namespace) -> ServeSettings:
    from elmo.serve.app import ServeSettings

    try:
        return ServeSettings(
            max_batch_tokens=args.max_batch_tokens,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_body_bytes=args.max_body_bytes,
            max_sentences=args.max_sentences,
            max_tokens=args.max_tokens,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or Ctrl-C."""
    from elmo.serve import require_serve_extra

    require_serve_extra()
    import torch
    import uvicorn

    from elmo.serve.app import ENVIRONMENT, create_app

    for name in ("workers", "threads", "replicas"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name}: expected an integer >= 1, found {value}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port: expected 0 to 65535, found {args.port}")
    settings = _settings(args)
    if args.ray is not None:
        return _run_on_ray(args, settings)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    torch.set_num_threads(threads)
    # Loaded here so that a bad model is one line before anything listens; the workers of
    # --workers K load their own copies.
    module = load_model(args)
    name = args.model or (f"{args.options} + {args.weights}" if args.options else "default")
    # uvicorn handles SIGTERM and SIGINT while it serves (graceful shutdown) and raises the
    # signal again when done: ignoring SIGTERM then makes a drained shutdown exit 0.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    common = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": False}
    if args.workers == 1:
        app = create_app(module, settings, model_name=name)
        uvicorn.run(app, **common)
        return 0
    del module
    source = [args.options, args.weights] if args.options else [args.model, None]
    engine = {"device": args.device, "engine": args.engine, "precision": args.precision}
    if args.cache_size is not None:
        engine["cache_size"] = args.cache_size
    os.environ[ENVIRONMENT] = json.dumps(
        {"source": source, "engine": engine, "settings": asdict(settings), "threads": threads, "name": name}
    )
    uvicorn.run("elmo.serve.app:app_from_environment", factory=True, workers=args.workers, **common)
    return 0


def _run_on_ray(args: argparse.Namespace, settings: ServeSettings) -> int:
    """``--ray``: the replicas on Ray Serve until SIGTERM or Ctrl-C, then exit 0."""
    from elmo.serve.replicas import serve_on_ray

    if args.workers != 1:
        raise UsageError("--workers is for a single machine; with --ray give --replicas")
    if args.model and (args.options or args.weights):
        raise UsageError("give either --model or --options with --weights, not both")
    if bool(args.options) != bool(args.weights):
        raise UsageError("--options and --weights go together")
    model = (args.options, args.weights) if args.options else (args.model or "default")
    name = args.model or (f"{args.options} + {args.weights}" if args.options else "default")
    if args.ray == "local":
        # A bad model is one line before Ray starts (on a cluster the replicas load their own,
        # from paths that may exist on its machines only).
        load_model(args)
    engine: dict[str, object] = {"device": args.device, "engine": args.engine, "precision": args.precision}
    if args.cache_size is not None:
        engine["cache_size"] = args.cache_size
    serve_on_ray(
        model,
        engine,
        settings,
        name=name,
        address=None if args.ray == "local" else args.ray,
        replicas=args.replicas,
        threads=args.threads or 1,
        host=args.host,
        port=args.port,
    )
    return 0
