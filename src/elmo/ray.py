"""Embedding on Ray: many processes and machines (``pip install "elmo-embeddings[ray]"``).

:func:`embed_dataset` adds embedding columns to any Ray Dataset; :func:`embed_corpus` is
``elmo embed-corpus``: text files in, a folder of shards out (see :mod:`elmo.corpus`).
Both run a Ray Data ``map_batches`` over a pool of actors, each holding one model (loaded
once, on a GPU when the actor was given one, with as many threads as it has CPUs). Ray
does the scheduling, backpressure and retries: an actor that dies is restarted and its
task run again.

Ray is imported when a function here is called, never by ``import elmo``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from elmo.choices import LAYERS, Layers, check_choice
from elmo.corpus import (
    CorpusJob,
    CorpusPlan,
    Shard,
    compute_shard,
    finish_corpus,
    plan_corpus,
)
from elmo.errors import CorpusError, ElmoError, MissingExtraError, ModelError

if TYPE_CHECKING:
    import ray.data

    from elmo.module import ElmoModule

__all__ = ["ModelSource", "embed_corpus", "embed_dataset"]

ModelSource = str | os.PathLike[str] | tuple[str | os.PathLike[str], str | os.PathLike[str]] | None
_EXTRA = 'pip install "elmo-embeddings[ray]"'


def _import_ray() -> Any:
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data
    except ImportError as e:
        raise MissingExtraError(
            f"elmo.ray needs Ray Data and pyarrow ({e.name} is missing): {_EXTRA}"
        ) from None
    return ray


# --------------------------------------------------------------------------- the actors
def _load_model(model: ModelSource, engine: dict[str, Any], threads: int) -> ElmoModule:
    """The model, loaded in a Ray worker: ``threads`` torch threads, the GPU Ray gave it."""
    import ray
    import torch

    import elmo

    torch.set_num_threads(max(1, threads))
    options = dict(engine)
    if options.get("device") is None and ray.get_gpu_ids():
        options["device"] = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
    source = model if isinstance(model, tuple) else (None if model in (None, "default") else model, None)
    try:
        return elmo.load(*source, progress=False, **options)
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        node = ray.util.get_node_ip_address()
        raise ModelError(
            f"model {_describe(model)} cannot be loaded on the Ray node {node}: {reason}"
        ) from None


def _describe(model: ModelSource) -> str:
    if isinstance(model, tuple):
        return f"{os.fspath(model[0])} + {os.fspath(model[1])}"
    return "default" if model is None else os.fspath(model)


_TOKEN = re.compile(r"\w+|[^\w\s]")


def _tokens(value: Any, tokenized: bool) -> list[str]:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        return value.split() if tokenized else _TOKEN.findall(value)
    return [str(t) for t in value]


class _SentenceEmbedder:
    """A Ray Data callable class: one model per actor, a batch of rows per call."""

    def __init__(
        self,
        model: ModelSource,
        engine: dict[str, Any],
        threads: int,
        layers: Layers,
        text_column: str,
        tokenized: bool,
        batch_size: int,
        output_column: str,
        tokens_column: str | None,
    ) -> None:
        self.module = _load_model(model, engine, threads)
        self.layers, self.batch_size = layers, batch_size
        self.text_column, self.tokenized = text_column, tokenized
        self.output_column, self.tokens_column = output_column, tokens_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from elmo.embedder import embed_iter

        if self.text_column not in batch:
            raise KeyError(f"text_column: no column {self.text_column!r}; the columns are {sorted(batch)}")
        tokens = [_tokens(v, self.tokenized) for v in batch[self.text_column]]
        out: dict[str, Any] = dict(batch)
        out[self.output_column] = list(embed_iter(self.module, tokens, self.layers, self.batch_size))
        if self.tokens_column:
            column = np.empty(len(tokens), dtype=object)
            for i, t in enumerate(tokens):
                column[i] = np.array(t, dtype=object)
            out[self.tokens_column] = column
        return out


def _record() -> dict[str, Any]:
    """Where and by which process a shard is computed (kept in the shard's file)."""
    import ray

    context = ray.get_runtime_context()
    return {
        "node": context.get_node_id(),
        "host": ray.util.get_node_ip_address(),
        "pid": os.getpid(),
        # the worker's peak memory so far, for sizing a cluster's nodes
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "id": uuid.uuid4().hex,
        "time": time.time(),
    }


class _ShardWriter:
    """A Ray Data callable class for ``elmo embed-corpus``: computes and publishes shards."""

    def __init__(self, model: ModelSource, engine: dict[str, Any], threads: int, job: CorpusJob) -> None:
        self.module = _load_model(model, engine, threads)
        self.job = job

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        names, computed, tokens, records = [], [], [], []
        for k in range(len(batch["path"])):
            shard = Shard(
                path=str(batch["path"][k]),
                source=str(batch["source"][k]),
                **{f: int(batch[f][k]) for f in ("first", "end", "start", "stop")},
            )
            record = _record()
            done, n = compute_shard(self.module, self.job, shard, record)
            names.append(shard.name)
            computed.append(done)
            tokens.append(n)
            records.append(json.dumps(record))
        return {"name": names, "computed": computed, "tokens": tokens, "record": records}


# --------------------------------------------------------------------------- errors
_ELMO_ERROR_LINE = re.compile(r"^elmo\.errors\.(\w+): (.+)$", re.MULTILINE)


def _driver_error(error: BaseException) -> BaseException:
    """A one-line error for what failed in a worker, if it was one of ours."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ElmoError):
            return seen
        seen = seen.__cause__ or getattr(seen, "cause", None)
    found = _ELMO_ERROR_LINE.findall(str(error))
    if found:
        name, message = found[-1]
        import elmo.errors

        cls = getattr(elmo.errors, name, CorpusError)
        return cls(message) if isinstance(cls, type) and issubclass(cls, ElmoError) else CorpusError(message)
    return error


# --------------------------------------------------------------------------- public API
def _engine(engine: str, precision: str | None, cache_size: int | None, device: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {"engine": engine, "device": device}
    if precision is not None:
        options["precision"] = precision
    if cache_size is not None:
        options["cache_size"] = cache_size
    return options


def embed_dataset(
    ds: ray.data.Dataset,
    model: ModelSource = "default",
    layers: Layers = "top",
    text_column: str = "text",
    tokenized: bool = True,
    batch_size: int = 64,
    precision: str | None = None,
    engine: str = "auto",
    cache_size: int | None = None,
    concurrency: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    output_column: str = "embeddings",
    tokens_column: str | None = "tokens",
) -> ray.data.Dataset:
    """``ds`` with an embedding column added: one row per sentence, the arrays of
    :func:`elmo.embedder.embed` (``layers="top"``: ``[n, D]``, ragged across rows, as a
    Ray tensor column), and the tokens they belong to (``tokens_column``; ``None``: no).

    ``text_column`` holds sentences: strings split on whitespace (``tokenized=True``), raw
    strings split into words and punctuation (``tokenized=False``), or lists of tokens.
    ``model``: a name, a directory, an (options, weights) pair, or ``"default"`` (the
    bundled model); each of the ``concurrency`` actors loads it once, runs
    ``int(num_cpus)`` torch threads (at least 1), and runs on a GPU when ``num_gpus`` > 0.
    Lazy, like every Ray Dataset: compose it with ``read_text``, ``filter``, ``write_*``.
    """
    ray = _import_ray()
    check_choice("layers", layers, LAYERS)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, found {batch_size!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency: expected a positive integer, found {concurrency!r}")
    return ds.map_batches(
        _SentenceEmbedder,
        fn_constructor_kwargs={
            "model": model,
            "engine": _engine(engine, precision, cache_size, None),
            "threads": max(1, int(num_cpus)),
            "layers": layers,
            "text_column": text_column,
            "tokenized": tokenized,
            "batch_size": batch_size,
            "output_column": output_column,
            "tokens_column": tokens_column,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
    )


def _model_identity(model: ModelSource) -> dict[str, Any]:
    """What the manifest records of the model: its name, and its files' digest and sizes."""
    from elmo.resolve import resolve

    source = model if isinstance(model, tuple) else (None if model in (None, "default") else model, None)
    files = resolve(*source, progress=False)
    digest = hashlib.sha256()
    sizes = {}
    for path in (files.options, files.weights):
        if path is None:
            continue
        if path.is_file():
            sizes[path.name] = path.stat().st_size
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return {"source": _describe(model), "options_sha256": digest.hexdigest()[:32], "sizes": sizes}


def embed_corpus(
    job: CorpusJob,
    model: ModelSource = "default",
    *,
    engine: str = "auto",
    precision: str | None = None,
    cache_size: int | None = None,
    device: str | None = None,
    address: str | None = None,
    workers: int | None = None,
    threads: int = 1,
    gpus: float = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``elmo embed-corpus``: embed every shard of ``job`` not already complete.

    ``address``: the Ray cluster (``"auto"``: the one running on this machine; ``None``:
    the one this process is connected to, else a new local one). ``workers`` actors (by
    default as many as the cluster's CPUs or GPUs allow), each with ``threads`` CPUs and
    ``gpus`` GPUs. Returns a summary: shards, computed (their names), skipped, lines,
    tokens, seconds.
    """
    ray = _import_ray()
    say = log or (lambda message: None)
    if threads < 1:
        raise ValueError(f"threads: expected a positive integer, found {threads}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers: expected a positive integer, found {workers}")
    plan = plan_corpus(job, _model_identity(model))
    todo = plan.todo
    if plan.done:
        say(f"{len(plan.done)} of {len(plan.shards)} shards already complete")
    started = not ray.is_initialized()
    if started:
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address is None:
            count = workers or max(1, (os.cpu_count() or 1) // threads)
            ray.init(num_cpus=count * threads, include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    # the command reports its own progress; Ray Data's log lines would drown it
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = context.print_on_execution_start = False
    try:
        start = time.perf_counter()
        results = _run(
            ray,
            plan,
            todo,
            model,
            _engine(engine, precision, cache_size, device),
            workers,
            threads,
            gpus,
            say,
        )
        seconds = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()
    return _finish(plan, results, seconds)


def _run(
    ray: Any,
    plan: CorpusPlan,
    todo: list[Shard],
    model: ModelSource,
    engine: dict[str, Any],
    workers: int | None,
    threads: int,
    gpus: float,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    if not todo:
        return []
    if workers is None:
        resources = ray.cluster_resources()
        if gpus:
            workers = max(1, int(resources.get("GPU", 0) // gpus))
        else:
            workers = max(1, int(resources.get("CPU", 1) // threads))
    workers = min(workers, len(todo))
    ds = ray.data.from_items([asdict(s) for s in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        _ShardWriter,
        fn_constructor_kwargs={"model": model, "engine": engine, "threads": threads, "job": plan.job},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=threads,
        num_gpus=gpus or None,
    )
    results: list[dict[str, Any]] = []
    last = time.monotonic()
    t0 = last
    tokens = 0
    try:
        for row in ds.iter_rows():
            results.append({k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()})
            tokens += int(row["tokens"])
            now = time.monotonic()
            if now - last >= 10:
                last = now
                say(f"{len(results)}/{len(todo)} shards, {tokens / (now - t0):.0f} tokens/s")
    except Exception as e:
        error = _driver_error(e)
        if error is e:
            raise
        raise error from None
    return results


def _finish(plan: CorpusPlan, results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    computed = {r["name"]: json.loads(r["record"]) for r in results if r["computed"]}
    written = plan.done | {r["name"] for r in results}
    if missing := sorted(s.name for s in plan.shards if s.name not in written):
        raise CorpusError(f"{plan.job.out_dir}: {len(missing)} shards were not written, e.g. {missing[0]}")
    finish_corpus(plan, computed)
    return {
        "shards": len(plan.shards),
        "computed": sorted(computed),
        "skipped": len(plan.shards) - len(computed),
        "lines": sum(f.lines for f in plan.files),
        "tokens": sum(int(r["tokens"]) for r in results),
        "seconds": round(seconds, 3),
        "output": str(plan.job.out_dir),
    }
