"""Shared test fixtures: paths into ``../shared`` and regenerated random models."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
ALLENNLP = FIXTURES / "allennlp-elmo"
BILMTF = FIXTURES / "bilm-tf"
REFERENCE = FIXTURES / "reference"
# Regenerated random models are kept here between runs (ignored by git).
MODEL_CACHE = Path(os.environ.get("ELMO_TEST_MODELS", ROOT / ".models"))


def pytest_configure(config: pytest.Config) -> None:
    if not FIXTURES.is_dir():
        raise pytest.UsageError(
            f"the shared fixtures are missing: expected {FIXTURES} beside the project root"
        )


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
    text = (REFERENCE / "sentences.txt").read_text(encoding="utf-8")
    return [line.split() for line in text.split("\n") if line.split()]


def random_model(size: str, seed: int, gain: int) -> Path:
    """Directory with options.json + weights.hdf5 from ``tools/make_random_elmo.py``."""
    out = MODEL_CACHE / f"{size}_seed{seed}_gain{gain}"
    if not (out / "weights.hdf5").is_file():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                str(SHARED / "tools" / "make_random_elmo.py"),
                "--size",
                size,
                "--seed",
                str(seed),
                "--gain",
                str(gain),
                "--out",
                str(out),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


@pytest.fixture(scope="session")
def small_model_dir() -> Path:
    return random_model("small", 1, 1)


@pytest.fixture(scope="session")
def original_model_dir() -> Path:
    return random_model("original", 1, 2)


@pytest.fixture(scope="session")
def tiny_model_files() -> tuple[Path, Path]:
    """AllenNLP's tiny test biLM (options, weights)."""
    return ALLENNLP / "options.json", ALLENNLP / "lm_weights.hdf5"


@pytest.fixture(scope="session")
def tiny_module(tiny_model_files):
    import elmo

    return elmo.load(*tiny_model_files)


def fixture_batches(path: Path) -> list[list[str]]:
    """The 10 batches of 3 sentences of the ``lm_embeddings`` fixtures."""
    sentences = json.loads(path.read_text(encoding="utf-8"))
    return [[sentences[k][i] for k in range(3)] for i in range(10)]
