"""Shared test fixtures: random models made in-process, paths into ``../shared``.

Random models come from :mod:`elmo.testing` and are the same with or without
``../shared``. The reference fixtures and data live in ``../shared`` beside the project
root; a test that needs them skips, naming the missing path, when they are absent.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import random
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
import torch

import elmo
from elmo.module import ElmoModule
from elmo.testing import Size, write_random_model

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
ALLENNLP = FIXTURES / "allennlp-elmo"
BILMTF = FIXTURES / "bilm-tf"
REFERENCE = FIXTURES / "reference"
# Generated random models are kept here between runs (ignored by git).
MODEL_CACHE = Path(os.environ.get("ELMO_TEST_MODELS", ROOT / ".models"))


def _missing(path: Path) -> str:
    return f"needs {path}, which is missing (the shared reference fixtures beside the project root)"


def needs_shared(path: Path) -> pytest.MarkDecorator:
    """Skip the marked test (or module, as ``pytestmark``) when ``path`` in ``../shared`` is absent."""
    return pytest.mark.skipif(not path.exists(), reason=_missing(path))


def shared_path(path: Path) -> Path:
    """``path`` (in ``../shared``) if it exists; otherwise skip the calling test or fixture."""
    if not path.exists():
        pytest.skip(_missing(path))
    return path


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` as a module (benchmarks/ is not a package), loaded once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def reference_sentences() -> list[list[str]]:
    """The 42 edge-case sentences of ``fixtures/reference`` as token lists."""
    text = shared_path(REFERENCE / "sentences.txt").read_text(encoding="utf-8")
    return [line.split() for line in text.split("\n") if line.split()]


def random_model(size: Size, seed: int, gain: int) -> Path:
    """Directory with options.json + weights.hdf5 of :func:`elmo.testing.write_random_model`."""
    out = MODEL_CACHE / f"{size}_seed{seed}_gain{gain}"
    if not (out / "weights.hdf5").is_file():
        write_random_model(out, size, seed, gain)
    return out


def tiny_model() -> Path:
    """The generated tiny model's directory (AllenNLP's tiny test model's shapes, seed 1)."""
    return random_model("tiny", 1, 1)


@pytest.fixture(scope="session")
def small_model_dir() -> Path:
    return random_model("small", 1, 1)


@pytest.fixture(scope="session")
def original_model_dir() -> Path:
    return random_model("original", 1, 2)


@pytest.fixture(scope="session")
def tiny_model_files() -> tuple[Path, Path]:
    """The generated tiny model's (options, weights)."""
    directory = tiny_model()
    return directory / "options.json", directory / "weights.hdf5"


@pytest.fixture(scope="session")
def tiny_module(tiny_model_files: tuple[Path, Path]) -> ElmoModule:
    return elmo.load(*tiny_model_files)


@pytest.fixture(scope="session")
def allennlp_model_files() -> tuple[Path, Path]:
    """AllenNLP's tiny test biLM (options, weights): for comparing with its stored outputs."""
    return shared_path(ALLENNLP / "options.json"), shared_path(ALLENNLP / "lm_weights.hdf5")


@pytest.fixture(scope="session")
def allennlp_module(allennlp_model_files: tuple[Path, Path]) -> ElmoModule:
    return elmo.load(*allennlp_model_files)


def fixture_batches(path: Path) -> list[list[str]]:
    """The 10 batches of 3 sentences of the ``lm_embeddings`` fixtures."""
    sentences = json.loads(shared_path(path).read_text(encoding="utf-8"))
    return [[sentences[k][i] for k in range(3)] for i in range(10)]


# Words of the service's tests (accented ones on purpose).
SERVE_WORDS = "the cat sat on a mat and then ran far away from naïve dogs , quickly . über".split()


def short_sentences(rng: random.Random, n: int, longest: int = 12) -> list[list[str]]:
    """``n`` sentences of 1 to ``longest`` of :data:`SERVE_WORDS` (never empty: the service
    refuses empty sentences)."""
    return [[rng.choice(SERVE_WORDS) for _ in range(rng.randint(1, longest))] for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_plain_module() -> Iterator[ElmoModule]:
    """The tiny model on the plain engine, with one intra-op thread while the test module
    runs (the tiny model gains nothing from two, and waits for a busy machine's cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield elmo.load(tiny_model(), engine="plain")
    torch.set_num_threads(threads)


def random_sentences(seed: int, count: int, vocabulary: int = 60) -> list[list[str]]:
    """``count`` sentences of 0 to 12 tokens drawn from ``vocabulary`` random words (seeded):
    many repeats across sentences, some empty sentences, lengths that vary."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijkl") for _ in range(rng.randint(1, 9))) for _ in range(vocabulary)]
    return [[rng.choice(words) for _ in range(rng.randint(0, 12))] for _ in range(count)]


T = TypeVar("T")


def run_in_threads(jobs: list[Callable[[], T]], threads: int = 8) -> list[T]:
    """Run ``jobs`` on ``threads`` threads at once (job i on thread i % threads; the
    threads start together) and return their results in job order; re-raises the first
    error a job raised."""
    results: list[T | None] = [None] * len(jobs)
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(first: int) -> None:
        start.wait()
        try:
            for i in range(first, len(jobs), threads):
                results[i] = jobs[i]()
        except BaseException as e:  # handed to the main thread
            errors.append(e)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


@pytest.fixture
def one_intra_op_thread() -> Iterator[None]:
    """One intra-op thread for the test: the tiny models' products gain nothing from more,
    and on a busy machine each Python thread's OpenMP team spins against the others (a
    thread test took 20 times longer). The sequential references of a thread test run
    under the same setting as its threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FullDisk:
    """A file on a disk with ``room[0]`` bytes left (one list shared by the files of one
    disk): a write past that fails with ENOSPC, as on a full disk. ``short=True``: the write
    that does not fit first fills the room and returns the bytes it took (an unbuffered
    file's short write); the next one fails."""

    def __init__(self, f: Any, room: list[int], short: bool = False) -> None:
        self.f, self.room, self.short = f, room, short

    def write(self, data: Any) -> int:
        if len(data) > self.room[0]:
            if not (self.short and self.room[0] > 0):
                raise OSError(errno.ENOSPC, "No space left on device")
            data = bytes(data)[: self.room[0]]
        self.room[0] -= len(data)
        return self.f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def full_disk(monkeypatch: pytest.MonkeyPatch, module: ModuleType, room: int) -> None:
    """Every file ``module`` opens shares ``room`` bytes; writes beyond raise ENOSPC."""
    left = [room]
    monkeypatch.setattr(module, "open", lambda *a, **k: FullDisk(open(*a, **k), left), raising=False)  # noqa: SIM115
