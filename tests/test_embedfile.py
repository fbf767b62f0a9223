"""The file writer behind ``elmo embed`` and ``ElmoEmbedder.embed_file``: streams, resume
checks, integrity, never destroying, locking, I/O errors, the sentence index."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import elmo
import elmo.embedfile as embedfile
from conftest import tiny_model
from elmo import cli
from elmo.embedfile import OUTPUT_MARK, EmbedJob, Progress, embed_file
from elmo.errors import EmbedFileError

TINY = ["--options", str(tiny_model() / "options.json"), "--weights", str(tiny_model() / "weights.hdf5")]
# 40 lines, some repeated (the sentence index keeps the last line of each), one blank
LINES = [f"the cat number {i % 13} sat" if i % 7 else "a  repeated   line" for i in range(40)]
LINES[5] = ""


def _write(path: Path, lines: list[str], prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + "".join(line + "\n" for line in lines).encode("utf-8"))
    return path


def _read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def _same(a: Path, b: Path) -> None:
    x, y = _read(a), _read(b)
    assert sorted(x) == sorted(y)
    for key in x:
        assert np.array_equal(x[key], y[key]), key


def elmo_cmd(*args: str, stdin: bytes | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "elmo", "embed", *args],
        input=stdin,
        capture_output=True,
        timeout=300,
        env=env,
        **kw,
    )


def _job(src, out: Path, **kw) -> EmbedJob:
    return EmbedJob(
        input=str(src) if isinstance(src, Path) else src, output=out, batch_size=4, shard_size=8, **kw
    )


@pytest.fixture
def module(tiny_model_files):
    return elmo.load(*tiny_model_files, stateful=True)


@pytest.fixture
def full(tmp_path, module) -> tuple[Path, Path]:
    """The input and the output of an uninterrupted run (stateful, five shards)."""
    src = _write(tmp_path / "in.txt", LINES)
    out = tmp_path / "full.hdf5"
    embed_file(module, _job(src, out))
    return src, out


class _Stop(Exception):
    pass


def _interrupt_after(module, monkeypatch, shards: int) -> None:
    """Make the run fail while embedding shard number ``shards`` (0-based)."""
    calls = {"n": 0}
    real = embedfile._ModuleLines.embed

    def embed(self, tokens):
        calls["n"] += 1
        if calls["n"] > shards:
            raise _Stop
        return real(self, tokens)

    monkeypatch.setattr(embedfile._ModuleLines, "embed", embed)


def _interrupted(module, monkeypatch, src, out, shards: int = 3, **kw) -> Path:
    with monkeypatch.context() as m:
        _interrupt_after(module, m, shards)
        with pytest.raises(_Stop):
            embed_file(module, _job(src, out, **kw))
    partial = out.with_name(out.name + ".partial")
    assert not out.exists()
    manifest = json.loads((partial / "manifest.json").read_text())
    assert manifest["lines_done"] == 8 * shards
    assert not [p for p in partial.iterdir() if p.name.endswith(".tmp")]
    return partial


# --------------------------------------------------------------------------- streams


def test_utf8_byte_order_mark_is_dropped(tmp_path, module):
    src = _write(tmp_path / "bom.txt", ["a b", "c"], prefix=b"\xef\xbb\xbf")
    out = tmp_path / "out.hdf5"
    embed_file(module, _job(src, out))
    data = _read(out)
    assert json.loads(data["sentence_to_index"][0]) == {"a b": "0", "c": "1"}
    module.reset_state()
    assert np.allclose(data["0"], module.embed(["a b"])[0], atol=1e-5, rtol=0)


def test_a_stream_is_read_once_without_a_total(tmp_path, module, full):
    src, want = full

    class Once(io.BytesIO):
        reads = 0

        def readline(self, size=-1):
            Once.reads += 1
            return super().readline(size)

        def seekable(self):
            return False

    stream = Once(src.read_bytes())
    starts = []
    out = tmp_path / "out.hdf5"
    embed_file(module, _job(stream, out), Progress(start=lambda total, done: starts.append((total, done))))
    _same(out, want)
    assert starts == [(None, 0)]
    assert Once.reads == len(LINES) + 1  # every line once, then the end


def test_a_regular_file_has_a_total(tmp_path, module, full):
    src, _ = full
    starts = []
    embed_file(module, _job(src, tmp_path / "o.hdf5"), Progress(start=lambda t, d: starts.append((t, d))))
    assert starts == [(len(LINES), 0)]


@pytest.mark.parametrize("how", ["dash", "dev-stdin", "process-substitution", "fifo"])
def test_streams_from_the_command_line(tmp_path, how):
    src = _write(tmp_path / "in.txt", LINES[:12])
    want = tmp_path / "want.hdf5"
    r = elmo_cmd(str(src), str(want), *TINY, "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    out = tmp_path / "out.hdf5"
    common = [str(out), *TINY, "--log-interval", "0"]
    if how == "dash":
        r = elmo_cmd("-", *common, stdin=src.read_bytes())
    elif how == "dev-stdin":
        r = elmo_cmd("/dev/stdin", *common, stdin=src.read_bytes())
    elif how == "process-substitution":
        line = " ".join([sys.executable, "-m", "elmo", "embed", f"<(cat {src})", *common])
        r = subprocess.run(["bash", "-c", line], capture_output=True, timeout=300)
    else:
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        proc = subprocess.Popen(
            [sys.executable, "-m", "elmo", "embed", str(fifo), *common], stderr=subprocess.PIPE
        )
        with open(fifo, "wb") as f:  # blocks until the command opens it: it is read once
            f.write(src.read_bytes())
        _, err = proc.communicate(timeout=300)
        r = subprocess.CompletedProcess(proc.args, proc.returncode, b"", err)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "wrote 12 sentences" in err
    assert "elmo embed: 12 sentences" in err  # progress in lines, no total for a stream
    _same(out, want)


def test_stdin_resume_checks_the_lines_done(tmp_path):
    """A killed stdin run resumes only with the same lines at its start."""
    text = "".join(f"line {i} of the input\n" for i in range(40)).encode()
    out = tmp_path / "out.hdf5"
    want = tmp_path / "want.hdf5"
    args = [*TINY, "--batch-size", "4", "--shard-size", "8", "--stateful", "--quiet"]
    assert elmo_cmd("-", str(want), *args, stdin=text).returncode == 0
    # a run that stops after 16 lines: standard input ends early, and the embedding of
    # the (unfinished) rest is interrupted by SIGINT once two shards are saved
    partial = tmp_path / "out.hdf5.partial"
    proc = subprocess.Popen(
        [sys.executable, "-m", "elmo", "embed", "-", str(out), *args],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdin.write(text[: text.index(b"line 16 ")])
    proc.stdin.flush()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if json.loads((partial / "manifest.json").read_text())["lines_done"] >= 16:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    other = text.replace(b"line 3 ", b"line X ")
    r = elmo_cmd("-", str(out), *args, "--resume", stdin=other)
    err = r.stderr.decode()
    assert r.returncode == 1 and len(err.splitlines()) == 1, err
    assert "the first 16 lines of <stdin> are not those of the interrupted run" in err
    assert not out.exists() and partial.is_dir()
    r = elmo_cmd("-", str(out), *args, "--resume", stdin=text)
    assert r.returncode == 0, r.stderr.decode()
    _same(out, want)


def test_invalid_utf8_is_found_while_streaming_and_the_work_before_it_is_kept(tmp_path, module):
    lines = [f"w{i}" for i in range(20)]
    src = tmp_path / "in.txt"
    data = "".join(line + "\n" for line in lines).encode().replace(b"w17", b"w\xff7")
    src.write_bytes(data)
    out = tmp_path / "out.hdf5"
    with pytest.raises(EmbedFileError, match=r"in.txt: line 18: not valid UTF-8 \(invalid start byte"):
        embed_file(module, _job(src, out))
    assert not out.exists()
    partial = tmp_path / "out.hdf5.partial"
    assert json.loads((partial / "manifest.json").read_text())["lines_done"] == 16
    embed_file(module, _job(src, out, resume=True, encoding_errors="replace"))
    want = tmp_path / "want.hdf5"
    embed_file(module, _job(src, want, encoding_errors="replace"))
    _same(out, want)


def test_an_endless_line_is_refused(tmp_path):
    r = elmo_cmd("/dev/zero", str(tmp_path / "out.hdf5"), *TINY, "--quiet")
    err = r.stderr.decode()
    assert r.returncode == 1 and "/dev/zero: line 1: longer than 16 MiB" in err, err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- resume checks


def test_resume_equals_an_uninterrupted_run(tmp_path, module, monkeypatch, full):
    src, want = full
    out = tmp_path / "out.hdf5"
    _interrupted(module, monkeypatch, src, out)
    with pytest.raises(EmbedFileError, match="an interrupted run is in the way"):
        embed_file(module, _job(src, out))
    embed_file(module, _job(src, out, resume=True))
    _same(out, want)
    assert not (tmp_path / "out.hdf5.partial").exists()


def test_resume_refuses_a_file_rewritten_with_the_same_size_and_time(tmp_path, module, monkeypatch, full):
    src, _ = full
    out = tmp_path / "out.hdf5"
    _interrupted(module, monkeypatch, src, out)
    before = os.stat(src)
    data = src.read_bytes()
    src.write_bytes(data.replace(b"number 1 ", b"number X ", 1))
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(src).st_size == before.st_size and os.stat(src).st_mtime_ns == before.st_mtime_ns
    with pytest.raises(
        EmbedFileError, match=r"the first 24 lines of .*in.txt are not those of the interrupted"
    ):
        embed_file(module, _job(src, out, resume=True))
    assert (tmp_path / "out.hdf5.partial" / "manifest.json").exists()  # refused: left as it was


def test_a_damaged_shard_is_named_and_redone(tmp_path, module, monkeypatch, full):
    src, want = full
    out = tmp_path / "out.hdf5"
    partial = _interrupted(module, monkeypatch, src, out)
    shard = partial / "shard-000001.hdf5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    warned = []
    embed_file(module, _job(src, out, resume=True), Progress(warn=warned.append))
    assert warned == [f"{shard}: damaged or missing (its SHA-256 is not the manifest's); redoing from line 9"]
    _same(out, want)


def test_a_damaged_shard_from_the_command_line(tmp_path, monkeypatch):
    src = _write(tmp_path / "in.txt", LINES)
    out = tmp_path / "out.hdf5"
    args = [str(src), str(out), *TINY, "--batch-size", "4", "--shard-size", "8", "--quiet"]
    assert elmo_cmd(*args).returncode == 0
    want = tmp_path / "want.hdf5"
    out.rename(want)
    calls = {"n": 0}
    real = embedfile._ModuleLines.embed

    def embed(self, tokens):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(self, tokens)

    monkeypatch.setattr(embedfile._ModuleLines, "embed", embed)
    assert cli.main(["embed", *args]) == 130
    monkeypatch.undo()
    shard = tmp_path / "out.hdf5.partial" / "shard-000000.hdf5"
    shard.write_bytes(shard.read_bytes()[:100])
    r = elmo_cmd(*args, "--resume")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert f"elmo embed: {shard}: damaged or missing" in err and "redoing from line 1" in err
    _same(out, want)


def test_the_manifest_is_read_with_a_size_cap(tmp_path, module, monkeypatch, full):
    src, _ = full
    out = tmp_path / "out.hdf5"
    partial = _interrupted(module, monkeypatch, src, out)
    monkeypatch.setattr(embedfile, "MANIFEST_CAP", 100)
    with pytest.raises(
        EmbedFileError,
        match=r"manifest.json: manifest of elmo embed of \d+ bytes, larger than the 100 bytes allowed",
    ):
        embed_file(module, _job(src, out, resume=True))
    assert (partial / "manifest.json").exists()


@pytest.mark.parametrize("damage", ["name", "type", "format"])
def test_a_damaged_manifest_is_refused_in_one_line(tmp_path, module, monkeypatch, full, damage):
    src, _ = full
    out = tmp_path / "out.hdf5"
    partial = _interrupted(module, monkeypatch, src, out)
    manifest = json.loads((partial / "manifest.json").read_text())
    if damage == "name":
        manifest["shards"][0]["name"] = "../../in.txt"
    elif damage == "type":
        manifest["shards"][1]["lines"] = "8"
    else:
        manifest["format"] = 1
    (partial / "manifest.json").write_text(json.dumps(manifest))
    message = "its format was 1, now 2" if damage == "format" else r"manifest.json: damaged .a field"
    with pytest.raises(EmbedFileError, match=message):
        embed_file(module, _job(src, out, resume=True))
    assert src.exists() and (partial / "shard-000000.hdf5").exists()


# --------------------------------------------------------------------------- never destroy


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_output_is_never_the_input(tmp_path, module, link):
    src = _write(tmp_path / "in.txt", ["a b"])
    out = tmp_path / "out.hdf5"
    if link == "same":
        out = src
    elif link == "symlink":
        out.symlink_to(src)
    else:
        os.link(src, out)
    with pytest.raises(EmbedFileError, match=r"is the input .*in.txt .the same file"):
        embed_file(module, _job(src, out, overwrite=True))
    assert src.read_bytes() == b"a b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"in.txt", out.name})


def test_input_inside_the_partial_folder_is_refused(tmp_path, module, monkeypatch, full):
    src, _ = full
    out = tmp_path / "out.hdf5"
    partial = _interrupted(module, monkeypatch, src, out)
    with pytest.raises(EmbedFileError, match=r"the same file as .*manifest.json"):
        embed_file(module, _job(partial / "manifest.json", out, overwrite=True))
    assert (partial / "manifest.json").exists()


def test_overwrite_replaces_only_what_elmo_embed_wrote(tmp_path, module):
    src = _write(tmp_path / "in.txt", ["a b"])
    out = tmp_path / "out.hdf5"
    for foreign in (b"keep me", None):
        if foreign is None:
            with h5py.File(out, "w") as f:  # an HDF5 file, not written by elmo embed
                f["x"] = np.zeros(3)
        else:
            out.write_bytes(foreign)
        before = out.read_bytes()
        with pytest.raises(EmbedFileError, match="was not written by elmo embed"):
            embed_file(module, _job(src, out, overwrite=True))
        assert out.read_bytes() == before
    out.unlink()
    embed_file(module, _job(src, out))
    with h5py.File(out, "r") as f:
        assert OUTPUT_MARK in f.attrs
    embed_file(module, _job(src, out, overwrite=True))  # its own output: replaced


def test_overwrite_clears_only_a_partial_folder_elmo_embed_made(tmp_path, module):
    src = _write(tmp_path / "in.txt", ["a b"])
    out = tmp_path / "out.hdf5"
    partial = tmp_path / "out.hdf5.partial"
    partial.mkdir()
    (partial / "thesis.tex").write_text("years of work")
    with pytest.raises(EmbedFileError, match="exists and was not made by elmo embed"):
        embed_file(module, _job(src, out, overwrite=True))
    assert (partial / "thesis.tex").read_text() == "years of work"
    assert not out.exists()


def test_a_second_run_on_the_same_output_fails_at_once(tmp_path):
    """The first run holds the lock while it waits for its FIFO input."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out.hdf5"
    first = subprocess.Popen(
        [sys.executable, "-m", "elmo", "embed", str(fifo), str(out), *TINY, "--quiet"], stderr=subprocess.PIPE
    )
    lock = tmp_path / "out.hdf5.partial" / "lock"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text()):
        assert first.poll() is None
        time.sleep(0.05)
    src = _write(tmp_path / "in.txt", ["a b"])
    r = elmo_cmd(str(src), str(out), *TINY, "--overwrite", "--quiet")
    err = r.stderr.decode()
    assert r.returncode == 1 and len(err.splitlines()) == 1, err
    assert f"out.hdf5.partial: in use by another elmo embed run (pid {first.pid} on " in err
    with open(fifo, "wb") as f:
        f.write(b"c d\n")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()
    assert _read(out)["0"].shape == (3, 2, 32)


def test_the_lock_is_released_after_a_run(tmp_path, module):
    src = _write(tmp_path / "in.txt", ["a b"])
    out = tmp_path / "out.hdf5"
    partial = tmp_path / "out.hdf5.partial"
    partial.mkdir()
    with open(partial / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 on elsewhere since then\n")
        held.flush()
        with pytest.raises(EmbedFileError, match=r"in use by another elmo embed run \(pid 1 on elsewhere"):
            embed_file(module, _job(src, out))
    embed_file(module, _job(src, out))
    assert out.exists() and not partial.exists()


# --------------------------------------------------------------------------- disk full


def test_disk_full_is_one_line_and_resumable(tmp_path, monkeypatch, capsys):
    src = _write(tmp_path / "in.txt", LINES)
    out = tmp_path / "out.hdf5"
    args = ["embed", str(src), str(out), *TINY, "--batch-size", "4", "--shard-size", "8", "--quiet"]
    want = tmp_path / "want.hdf5"
    assert cli.main([*args[:2], str(want), *args[3:]]) == 0
    real = h5py.Group.create_dataset
    count = {"n": 0}

    def create_dataset(self, name, *a, **kw):
        count["n"] += 1
        if count["n"] == 8 * 2 + 4:  # in the third shard
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *a, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    assert cli.main(args) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    partial = tmp_path / "out.hdf5.partial"
    assert err == f"elmo embed: error: {partial / 'shard-000002.hdf5'}: No space left on device (ENOSPC)\n"
    assert not out.exists()
    assert sorted(p.name for p in partial.iterdir()) == [
        "lock",
        "made-by-elmo-embed",
        "manifest.json",
        "shard-000000.hdf5",
        "shard-000001.hdf5",
    ]
    assert cli.main([*args, "--resume"]) == 0
    _same(out, want)


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


@pytest.mark.parametrize("where", ["shard", "merge"])
def test_file_too_large_in_a_real_run(tmp_path, where):
    """RLIMIT_FSIZE makes writes past 100 kB fail with EFBIG, as a full disk fails them."""
    lines = [f"sentence number {i} is here" for i in range(100 if where == "shard" else 40)]
    src = _write(tmp_path / "in.txt", lines)
    out = tmp_path / "out.hdf5"
    size = ["--batch-size", "4", "--shard-size", "400" if where == "shard" else "8"]
    r = subprocess.run(
        [sys.executable, "-m", "elmo", "embed", str(src), str(out), *TINY, *size, "--quiet"],
        capture_output=True,
        timeout=300,
        preexec_fn=_limit_file_size,
    )
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert len(err.splitlines()) == 1 and err.endswith(": File too large (EFBIG)\n"), err
    partial = tmp_path / "out.hdf5.partial"
    assert not out.exists()
    if where == "shard":
        assert "shard-000000.hdf5" in err and not partial.exists()  # nothing done: nothing kept
    else:
        assert "final.hdf5.tmp" in err
        assert not [p for p in partial.iterdir() if "tmp" in p.name or p.suffix == ".sqlite"]
    r = elmo_cmd(str(src), str(out), *TINY, *size, "--quiet", "--resume")
    assert r.returncode == 0, r.stderr.decode()
    want = tmp_path / "want.hdf5"
    assert elmo_cmd(str(src), str(want), *TINY, *size, "--quiet").returncode == 0
    _same(out, want)


# --------------------------------------------------------------------------- sentence index


def test_sentence_to_index_is_allennlps_dictionary(tmp_path, module, full):
    """AllenNLP's dict: first-appearance order, the last line of a repeated sentence."""
    _, out = full
    expected: dict[str, str] = {}
    for i, line in enumerate(LINES):
        expected[line.strip()] = str(i)
    assert _read(out)["sentence_to_index"][0] == json.dumps(expected).encode()


def test_the_merge_holds_hdf5s_metadata_cache_small(tmp_path, module, monkeypatch):
    """HDF5's metadata cache grows with the datasets in a file unless capped: every file
    the merge opens (the output, each shard) keeps it at 1 MiB, in the default file format."""
    seen: list[tuple[str, int, int, str]] = []  # files closed while the output is open
    merging: list[bool] = [False]

    class Spy(h5py.File):  # type: ignore[misc]
        def __init__(self, name, *args, **kw) -> None:
            super().__init__(name, *args, **kw)
            merging[0] = merging[0] or Path(self.filename).name == "final.hdf5.tmp"

        def close(self) -> None:
            if merging[0] and self.id.valid:
                config = self.id.get_mdc_config()
                seen.append((Path(self.filename).name, config.max_size, config.initial_size, self.libver[0]))
                merging[0] = Path(self.filename).name != "final.hdf5.tmp"
            super().close()

    monkeypatch.setattr(embedfile.h5py, "File", Spy)
    src = _write(tmp_path / "in.txt", [f"line {i}" for i in range(20)])
    embed_file(module, _job(src, tmp_path / "out.hdf5"))
    monkeypatch.undo()
    names = [name for name, *_ in seen]
    assert names[-1] == "final.hdf5.tmp" and len(names) == 4  # 3 shards of 8, 8, 4 lines
    for name, max_size, initial_size, low in seen:
        assert (max_size, initial_size, low) == (1 << 20, 1 << 20, "earliest"), name
    with h5py.File(tmp_path / "out.hdf5") as f:
        assert sorted(f) == sorted([*map(str, range(20)), "sentence_to_index"])


def test_the_input_digest_is_of_the_lines_read(tmp_path, module, monkeypatch, full):
    src, _ = full
    partial = _interrupted(module, monkeypatch, src, tmp_path / "out.hdf5")
    manifest = json.loads((partial / "manifest.json").read_text())
    first_24 = b"".join(src.read_bytes().splitlines(keepends=True)[:24])
    assert manifest["input_sha256"] == hashlib.sha256(first_24).hexdigest()
    for entry in manifest["shards"]:
        assert entry["sha256"] == hashlib.sha256((partial / entry["name"]).read_bytes()).hexdigest()
