"""The ``elmo`` command, run for real in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import elmo
from conftest import reference_sentences, tiny_model

TINY_OPTIONS, TINY_WEIGHTS = tiny_model() / "options.json", tiny_model() / "weights.hdf5"
TINY = ["--options", str(TINY_OPTIONS), "--weights", str(TINY_WEIGHTS)]


def elmo_cmd(*args: str, stdin: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "elmo", *args], input=stdin, capture_output=True, timeout=timeout, env=env
    )


def _read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


FILE_LINES = [
    "The cat sat on the mat .",
    "",
    "Zürich , São Paulo and Kraków",
    "x" * 70 + " short",
    "東京 是 日本 的 首都 。",
    "  spaced   out  ",
    "😀😀😀 emoji",
]


@pytest.mark.parametrize("layers", ["all", "top", "average", "elmo", "default"])
def test_embed_file_matches_the_module(tmp_path, tiny_model_files, layers):
    src = _write_lines(tmp_path / "in.txt", FILE_LINES)
    out = tmp_path / "out.hdf5"
    r = elmo_cmd("embed", str(src), str(out), *TINY, "--layers", layers, "--batch-size", "2", "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr == b""
    data = _read(out)
    m = elmo.load(*tiny_model_files)
    want = m.embed(FILE_LINES, layers=layers)
    assert sorted(data) == sorted([*map(str, range(len(FILE_LINES))), "sentence_to_index"])
    for i, array in enumerate(want):
        assert data[str(i)].shape == array.shape
        assert np.allclose(data[str(i)], array, rtol=1e-5, atol=1e-5)
    index = json.loads(data["sentence_to_index"][0])
    assert index["The cat sat on the mat ."] == "0" and index["spaced   out"] == "5"
    assert data["1"].shape[-2 if layers != "default" else 0] == (0 if layers != "default" else 32)


@pytest.mark.parametrize(
    ("flags", "tolerance"),
    [(["--engine", "plain"], 1e-5), (["--cache-size", "0"], 1e-5), (["--precision", "bfloat16"], 0.1)],
)
def test_engine_flags(tmp_path, tiny_model_files, flags, tolerance):
    src = _write_lines(tmp_path / "in.txt", FILE_LINES)
    out = tmp_path / "out.hdf5"
    r = elmo_cmd("embed", str(src), str(out), *TINY, "--layers", "top", *flags, "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    data = _read(out)
    want = elmo.load(*tiny_model_files, engine="plain").embed(FILE_LINES, layers="top")
    for i, array in enumerate(want):
        assert data[str(i)].shape == array.shape
        assert np.abs(data[str(i)] - array).max(initial=0.0) <= tolerance


def test_stdin_float16_and_progress_lines(tmp_path, tiny_model_files):
    out = tmp_path / "out.hdf5"
    r = elmo_cmd(
        "embed",
        "-",
        str(out),
        *TINY,
        "--dtype",
        "float16",
        "--layers",
        "top",
        "--log-interval",
        "0",
        stdin=b"a b c\nd e\n",
    )
    assert r.returncode == 0, r.stderr.decode()
    err = r.stderr.decode()
    assert "sentences" in err and "tokens/s" in err and "wrote 2 sentences (5 tokens)" in err
    data = _read(out)
    assert data["0"].dtype == np.float16 and data["0"].shape == (3, 32)
    want = elmo.load(*tiny_model_files).embed(["a b c"], layers="top")[0]
    assert np.allclose(data["0"], want, atol=2e-3, rtol=1e-3)


def _interrupted_run(tmp_path: Path, src: Path, out: Path, extra: list[str], sig: int) -> None:
    """Start a run, wait until some pieces of work are saved, then send ``sig``."""
    partial = out.with_name(out.name + ".partial")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "elmo", "embed", str(src), str(out), *extra, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if json.loads((partial / "manifest.json").read_text())["lines_done"] >= 64:
                break
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err.decode()
        assert "interrupted" in err.decode() and "--resume" in err.decode()
    assert not out.exists()
    assert partial.is_dir()


@pytest.mark.parametrize(
    ("mode", "sig", "engine"),
    [
        ("stateless", signal.SIGKILL, "plain"),
        ("stateful", signal.SIGKILL, "plain"),
        ("stateless", signal.SIGINT, "plain"),
        ("stateless", signal.SIGKILL, "fast"),
    ],
)
def test_resume_after_interruption_equals_a_full_run(tmp_path, small_model_dir, mode, sig, engine):
    """Bit for bit with the plain model; to float32 rounding with the fast engine, whose
    products may round differently from run to run when the CPU is shared. Two separate
    fast runs of these lines differed by 0.0 with AVX2 and AVX-512 kernels
    (benchmarks/numerics.py, embed_run_to_run): 1e-5 is the float32 bound of the spec."""
    lines = [" ".join(s) for s in reference_sentences()] * 8  # 336 lines
    src = _write_lines(tmp_path / "in.txt", lines)
    args = ["--model", str(small_model_dir), "--batch-size", "8", "--shard-size", "32", "--layers", "top"]
    args += ["--engine", engine]
    if mode == "stateful":
        args.append("--stateful")
    full = tmp_path / "full.hdf5"
    r = elmo_cmd("embed", str(src), str(full), *args, "--quiet")
    assert r.returncode == 0, r.stderr.decode()

    out = tmp_path / "out.hdf5"
    _interrupted_run(tmp_path, src, out, args, sig)
    r = elmo_cmd("embed", str(src), str(out), *args, "--quiet")
    assert r.returncode == 1 and b"--resume" in r.stderr
    r = elmo_cmd("embed", str(src), str(out), *args, "--resume")
    assert r.returncode == 0, r.stderr.decode()
    assert b"resuming after line" in r.stderr
    a, b = _read(full), _read(out)
    assert sorted(a) == sorted(b)
    for key in a:
        if engine == "plain" or key == "sentence_to_index":
            assert np.array_equal(a[key], b[key]), key
        else:
            assert np.abs(a[key] - b[key]).max(initial=0.0) <= 1e-5, key
    assert not out.with_name("out.hdf5.partial").exists()


def test_resume_refuses_different_arguments(tmp_path, small_model_dir):
    lines = [" ".join(s) for s in reference_sentences()] * 8
    src = _write_lines(tmp_path / "in.txt", lines)
    out = tmp_path / "out.hdf5"
    args = ["--model", str(small_model_dir), "--batch-size", "8", "--shard-size", "32"]
    _interrupted_run(tmp_path, src, out, [*args, "--layers", "top"], signal.SIGKILL)
    r = elmo_cmd("embed", str(src), str(out), *args, "--layers", "all", "--resume")
    assert r.returncode == 1
    assert b'its layers was "top", now "all"' in r.stderr
    r = elmo_cmd("embed", str(src), str(out), *args, "--layers", "all", "--overwrite", "--quiet")
    assert r.returncode == 0 and out.exists()


@pytest.mark.parametrize(
    ("setup", "args", "status", "message"),
    [
        (None, ["missing.txt", "out.hdf5", *TINY], 1, "missing.txt: input file not found"),
        ("bad_utf8", ["in.txt", "out.hdf5", *TINY], 1, "in.txt: line 2: not valid UTF-8"),
        ("good", ["in.txt", "in.txt/out.hdf5", *TINY], 1, "does not exist"),
        ("good", ["in.txt", "nowhere/out.hdf5", *TINY], 1, "the folder nowhere does not exist"),
        (
            "good",
            ["in.txt", "out.hdf5", "--model", "no-such-model"],
            1,
            "no-such-model: no such model directory",
        ),
        (
            "bad_options",
            ["in.txt", "out.hdf5", "--options", "opts.json", "--weights", "w.hdf5"],
            1,
            "opts.json: not valid JSON",
        ),
        (
            "truncated",
            ["in.txt", "out.hdf5", "--options", str(TINY_OPTIONS), "--weights", "w.hdf5"],
            1,
            "w.hdf5: cannot read as HDF5",
        ),
        ("exists", ["in.txt", "out.hdf5", *TINY], 1, "out.hdf5: already exists; pass --overwrite"),
        ("good", ["in.txt", "out.hdf5", "--weights", "w.hdf5"], 2, "--options and --weights go together"),
        (
            "good",
            ["in.txt", "out.hdf5", *TINY, "--batch-size", "0"],
            2,
            "--batch-size: expected a positive integer",
        ),
        ("good", ["in.txt", "out.hdf5", *TINY, "--layers", "middle"], 2, "invalid choice: 'middle'"),
        (
            "good",
            ["in.txt", "out.hdf5", *TINY, "--cache-size", "-1"],
            2,
            "--cache-size: expected an integer >= 0",
        ),
        (
            "good",
            ["in.txt", "out.hdf5", *TINY, "--engine", "plain", "--precision", "int8"],
            2,
            "--precision int8 needs the fast engine",
        ),
    ],
)
def test_bad_input_gives_one_line_and_status(tmp_path, setup, args, status, message):
    if setup == "bad_utf8":
        (tmp_path / "in.txt").write_bytes(b"fine line\nbad \xff byte\n")
    elif setup is not None:
        (tmp_path / "in.txt").write_text("a b\n")
    if setup == "bad_options":
        (tmp_path / "opts.json").write_text("{not json")
        (tmp_path / "w.hdf5").write_bytes(b"")
    if setup == "truncated":
        (tmp_path / "w.hdf5").write_bytes(TINY_WEIGHTS.read_bytes()[:1000])
    if setup == "exists":
        (tmp_path / "out.hdf5").write_bytes(b"keep me")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        r = elmo_cmd("embed", *args)
    finally:
        os.chdir(cwd)
    err = r.stderr.decode()
    assert r.returncode == status, err
    assert message in err
    assert "Traceback" not in err, err
    if status == 1:  # bad input: exactly one line; bad arguments also get argparse's usage line
        assert len(err.strip().splitlines()) == 1, err
    if setup == "exists":
        assert (tmp_path / "out.hdf5").read_bytes() == b"keep me"
    else:
        assert not (tmp_path / "out.hdf5").exists()


def test_encoding_errors_replace(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"fine line\nbad \xff byte\n")
    out = tmp_path / "out.hdf5"
    r = elmo_cmd("embed", str(src), str(out), *TINY, "--encoding-errors", "replace", "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    assert "bad \ufffd byte" in json.loads(_read(out)["sentence_to_index"][0])


def test_info(tmp_path):
    r = elmo_cmd("info", "--json", *TINY)
    assert r.returncode == 0, r.stderr.decode()
    info = json.loads(r.stdout)
    assert info["outputs"]["elmo"] == ["B", "T", 32]
    assert info["parameters"] == sum(p.numel() for p in elmo.load(*map(Path, TINY[1::2])).bilm.parameters())
    r = elmo_cmd("info", *TINY)
    assert b"lstm_outputs2" in r.stdout and b"parameters:" in r.stdout


def test_help_and_version():
    assert elmo_cmd("--version").stdout.startswith(b"elmo-embeddings ")
    assert b"--resume" in elmo_cmd("embed", "--help").stdout


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (MemoryError(), "elmo info: error: out of memory; run again with ELMO_DEBUG=1 for the traceback"),
        (RecursionError("maximum recursion depth exceeded"), "elmo info: error: input nested too deeply"),
        (
            KeyError("x"),
            "elmo info: error: unexpected internal error (KeyError: 'x'); run again with ELMO_DEBUG=1",
        ),
        (ValueError(""), "elmo info: error: unexpected internal error (ValueError); run again"),
        (ValueError("a\nb"), "elmo info: error: a b"),
    ],
)
def test_any_exception_is_one_line(monkeypatch, capsys, raised, message):
    from elmo import cli
    from elmo.commands import info

    def fail(args):
        raise raised

    monkeypatch.setattr(info, "run", fail)
    monkeypatch.delenv("ELMO_DEBUG", raising=False)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main(["info"]) == 1
    finally:
        signal.signal(signal.SIGTERM, handler)
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
