"""Released models by name: downloads from a loopback HTTP server into a temporary cache.

Nothing here leaves 127.0.0.1: ``ELMO_DOWNLOAD_URL`` points the registry's published
addresses at a local server that serves AllenNLP's tiny test model in place of the
released files, misbehaving on request (slow, stalled, dropped connections, ignored
``Range``, wrong sizes, missing or corrupt files).
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import pytest
import torch

import elmo
from conftest import FullDisk, tiny_model
from elmo import cli, download
from elmo.config import ElmoConfig
from elmo.download import default_cache_dir, download_model, register_model
from elmo.errors import DownloadError
from elmo.resolve import resolve

# The served model: the generated tiny one.
TINY = tiny_model()
OPTIONS = (TINY / "options.json").read_bytes()
WEIGHTS = (TINY / "weights.hdf5").read_bytes()  # about 450 kB
# Where the registry's "small" files live, relative to the published base URL.
SMALL = "/2x1024_128_2048cnn_1xhighway/elmo_2x1024_128_2048cnn_1xhighway"
SMALL_OPTIONS, SMALL_WEIGHTS = SMALL + "_options.json", SMALL + "_weights.hdf5"


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must not hold up the test's end

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {SMALL_OPTIONS: OPTIONS, SMALL_WEIGHTS: WEIGHTS}
        # How to misbehave. chunk: bytes a write; delay: seconds after each write;
        # ignore_range: answer 200 with the whole file; no_length: no Content-Length. For
        # weight files only: unavailable: answer the next requests 503; stall: seconds
        # before the body; short_by: bytes left off the file; drop_after: bytes after
        # which the next `drops` responses hang up.
        self.settings: dict[str, float] = dict(
            chunk=64 * 1024, delay=0, ignore_range=0, no_length=0, unavailable=0, stall=0, short_by=0, drops=0
        )
        # Paths answered with an endless body (no Content-Length), or with this announced length.
        self.endless: dict[str, int | None] = {}
        self.log: list[tuple[str, str | None, int]] = []  # path, Range header, status
        self.if_range: list[str | None] = []  # the If-Range header of each ranged request
        # A strong ETag per path; a test changes one to stand for a new version of the file.
        self.etags: dict[str, str] = {}
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that time out leave broken pipes behind; that is the point

    def weight_requests(self) -> list[tuple[str, str | None, int]]:
        return [entry for entry in self.log if entry[0].endswith(".hdf5")]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv, settings = self.server, self.server.settings
        if self.path in srv.endless:
            self._endless(srv.endless[self.path])
            return
        body = srv.files.get(self.path)
        requested = self.headers.get("Range")
        weights = self.path.endswith(".hdf5")
        if body is None:
            srv.log.append((self.path, requested, 404))
            self.send_error(404)
            return
        if weights and settings["unavailable"] > 0:
            settings["unavailable"] -= 1
            srv.log.append((self.path, requested, 503))
            self.send_error(503)
            return
        etag = srv.etags.get(self.path, f'"{len(body)}-1"')
        if requested:
            srv.if_range.append(self.headers.get("If-Range"))
        if_range = self.headers.get("If-Range")
        start = 0
        if requested and not settings["ignore_range"] and if_range in (None, etag):
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= len(body):
                srv.log.append((self.path, requested, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        srv.log.append((self.path, requested, 206 if start else 200))
        self.send_header("ETag", etag)
        part = body[start:]
        if weights:
            part = part[: len(part) - int(settings["short_by"])]
        if not settings["no_length"]:
            self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        limit = len(part)
        if weights:
            if settings["drops"] > 0:
                settings["drops"] -= 1
                limit = int(settings["drop_after"])
            time.sleep(settings["stall"])
        chunk = int(settings["chunk"])
        for i in range(0, limit, chunk):
            self.wfile.write(part[i : min(i + chunk, limit)])
            self.wfile.flush()
            time.sleep(settings["delay"])
        # HTTP/1.0: the connection closes here, also after a short body.

    def _endless(self, announced: int | None) -> None:
        """Zeros until the client hangs up (at most 64 MiB, so a broken client cannot fill memory)."""
        self.server.log.append((self.path, self.headers.get("Range"), 200))
        self.send_response(200)
        if announced is not None:
            self.send_header("Content-Length", str(announced))
        self.end_headers()
        block = b"\0" * 65536
        try:
            for _ in range(1024):
                self.wfile.write(block)
        except OSError:
            pass


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cache(tmp_path, server, monkeypatch) -> Path:
    """The cache directory, with the published addresses pointed at the server."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ELMO_CACHE", str(cache))
    monkeypatch.setenv("ELMO_DOWNLOAD_URL", server.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(download, "_BACKOFF", 0.01)
    # Tests register models of their own; the registry is restored afterwards.
    monkeypatch.setattr(download, "_REGISTRY", dict(download._REGISTRY))
    return cache


def _env(server: _Server, cache: Path) -> dict[str, str]:
    return dict(
        os.environ,
        ELMO_CACHE=str(cache),
        ELMO_DOWNLOAD_URL=server.url,
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )


def _assert_cached(cache: Path, name: str = "small") -> None:
    directory = cache / name
    assert (directory / "options.json").read_bytes() == OPTIONS
    assert (directory / "weights.hdf5").read_bytes() == WEIGHTS
    assert not list(directory.glob("*.partial")) and not list(directory.glob("*.validator"))


# ---------------------------------------------------------------------- normal use
def test_download_once_then_load_by_name(cache, server):
    assert download_model("small", progress=False) == cache / "small"
    _assert_cached(cache)
    assert [(path, status) for path, _, status in server.log] == [(SMALL_OPTIONS, 200), (SMALL_WEIGHTS, 200)]

    # Cached: no more requests, whichever way the name comes in.
    assert resolve("small").weights == cache / "small" / "weights.hdf5"
    model = elmo.load("small")
    assert len(server.log) == 2
    reference = elmo.load(TINY / "options.json", TINY / "weights.hdf5")
    with torch.no_grad():
        assert torch.equal(model(["the cat sat"])["elmo"], reference(["the cat sat"])["elmo"])


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("ELMO_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "elmo"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "elmo"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "elmo"
    monkeypatch.setenv("ELMO_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_paths_names_and_registration(cache, server, tmp_path):
    # an existing path is taken as it is
    assert resolve(TINY).weights == TINY / "weights.hdf5"
    with pytest.raises(
        FileNotFoundError, match=r"nosuch: no such model directory, nor a known model name \(small"
    ):
        resolve("nosuch")
    with pytest.raises(FileNotFoundError, match=r"nor a known model name \(small, medium, original"):
        elmo.load("nosuch")
    with pytest.raises(FileNotFoundError, match=r"no such model directory$"):
        elmo.load(str(tmp_path / "missing"))
    assert not server.log

    register_model("mine", f"{server.url}/mine/o.json", f"{server.url}/mine/w.hdf5", size=len(WEIGHTS))
    server.files.update({"/mine/o.json": OPTIONS, "/mine/w.hdf5": WEIGHTS})
    assert elmo.load("mine").config.lstm.dim == 64
    _assert_cached(cache, "mine")
    with pytest.raises(ValueError, match="already registered"):
        register_model("mine", "a", "b")
    register_model("mine", "a", "b", replace=True)
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="not a path"):
            register_model(bad, "a", "b")
    with pytest.raises(ValueError, match="positive number of bytes"):
        register_model("sized", "a", "b", size=0)


def test_file_url_mirror(cache, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / SMALL_WEIGHTS[1:]).parent.mkdir(parents=True)
    (mirror / SMALL_OPTIONS[1:]).write_bytes(OPTIONS)
    (mirror / SMALL_WEIGHTS[1:]).write_bytes(WEIGHTS)
    monkeypatch.setenv("ELMO_DOWNLOAD_URL", mirror.as_uri())
    download_model("small", progress=False)
    _assert_cached(cache)


# ---------------------------------------------------------------------- resuming
def test_dropped_connection_resumes_with_range(cache, server, capsys):
    server.settings.update(drops=1, drop_after=100_000)
    download_model("small")
    _assert_cached(cache)
    assert server.weight_requests() == [
        (SMALL_WEIGHTS, None, 200),
        (SMALL_WEIGHTS, "bytes=100000-", 206),
    ]
    assert server.if_range == [f'"{len(WEIGHTS)}-1"']  # the ETag of the first response
    err = capsys.readouterr().err
    assert f"connection closed after 100000 of {len(WEIGHTS)} bytes; retrying" in err


def test_file_changed_on_the_server_starts_over(cache, server, capsys):
    """The partial file is of another version than the server's (its kept ETag differs):
    the server answers If-Range with the whole file, which replaces the partial one
    instead of being joined to it."""
    (cache / "small").mkdir(parents=True)
    (cache / "small" / "weights.hdf5.partial").write_bytes(b"\0" * 200_000)
    (cache / "small" / "weights.hdf5.partial.validator").write_text('"old"\n')
    download_model("small")
    _assert_cached(cache)
    assert server.weight_requests() == [(SMALL_WEIGHTS, "bytes=200000-", 200)]
    assert server.if_range == ['"old"']
    assert "changed on the server since the partial download; starting over" in capsys.readouterr().err


def test_partial_file_of_an_earlier_run_is_resumed(cache, server):
    (cache / "small").mkdir(parents=True)
    (cache / "small" / "weights.hdf5.partial").write_bytes(WEIGHTS[:200_000])
    download_model("small", progress=False)
    _assert_cached(cache)
    assert server.weight_requests() == [(SMALL_WEIGHTS, "bytes=200000-", 206)]


def test_complete_partial_file_is_kept(cache, server):
    (cache / "small").mkdir(parents=True)
    (cache / "small" / "weights.hdf5.partial").write_bytes(WEIGHTS)
    download_model("small", progress=False)
    _assert_cached(cache)
    assert server.weight_requests() == [(SMALL_WEIGHTS, f"bytes={len(WEIGHTS)}-", 416)]


def test_server_ignoring_range_starts_over(cache, server, capsys):
    (cache / "small").mkdir(parents=True)
    (cache / "small" / "weights.hdf5.partial").write_bytes(b"x" * 200_000)  # would corrupt if appended to
    server.settings["ignore_range"] = True
    download_model("small")
    _assert_cached(cache)
    assert server.weight_requests() == [(SMALL_WEIGHTS, "bytes=200000-", 200)]
    assert "does not resume downloads; starting over" in capsys.readouterr().err


# ---------------------------------------------------------------------- slow servers
def test_slow_server_shows_progress(cache, server, capsys):
    server.settings.update(chunk=32 * 1024, delay=0.02)  # ~0.3 s in 14 pieces
    download_model("small", progress=True, timeout=2)
    _assert_cached(cache)
    err = capsys.readouterr().err
    assert "small weights" in err and "100%" in err and "440k/440k" in err


def test_stalled_server_times_out(cache, server):
    server.settings["stall"] = 2.0
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"weights from .* \(timed out; gave up after 2 attempts\)"):
        download_model("small", progress=False, timeout=0.2, retries=1)
    assert time.monotonic() - t0 < 1.5
    assert len(server.weight_requests()) == 2
    assert not (cache / "small" / "weights.hdf5").exists()


def test_unavailable_server_is_retried(cache, server, capsys):
    server.settings["unavailable"] = 2
    download_model("small")
    _assert_cached(cache)
    assert [status for _, _, status in server.weight_requests()] == [503, 503, 200]
    assert "HTTP 503 Service Unavailable; retrying" in capsys.readouterr().err


# ---------------------------------------------------------------------- bad files
def test_size_differing_from_the_registry(cache, server):
    register_model("tiny", f"{server.url}/t/o.json", f"{server.url}/t/w.hdf5", size=len(WEIGHTS) + 1)
    server.files.update({"/t/o.json": OPTIONS, "/t/w.hdf5": WEIGHTS})
    with pytest.raises(
        DownloadError,
        match=rf"'tiny' weights from {server.url}/t/w.hdf5 \(the server announces {len(WEIGHTS)} bytes, "
        rf"the registry expects {len(WEIGHTS) + 1}\); fetch it yourself and place it at "
        r".*/tiny/weights.hdf5$",
    ):
        download_model("tiny", progress=False)
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == [".lock", "options.json"]


@pytest.mark.parametrize("size", [None, len(WEIGHTS), len(WEIGHTS) - 1])
def test_no_content_length(cache, server, size):
    server.settings["no_length"] = True  # the end of the file is where the server hangs up
    register_model("tiny", f"{server.url}/t/o.json", f"{server.url}/t/w.hdf5", size=size)
    server.files.update({"/t/o.json": OPTIONS, "/t/w.hdf5": WEIGHTS})
    if size == len(WEIGHTS) - 1:
        more = f"the server sent more than the {len(WEIGHTS) - 1} bytes the registry"
        with pytest.raises(DownloadError, match=more):
            download_model("tiny", progress=False)
        assert not list((cache / "tiny").glob("weights.hdf5*"))
    else:
        download_model("tiny", progress=False)
        _assert_cached(cache, "tiny")


def test_short_file_is_rejected_by_structure(cache, server):
    server.settings["short_by"] = 1000  # a consistent Content-Length, but a truncated file
    with pytest.raises(DownloadError, match=r"are not valid, so they were deleted \(.*truncated"):
        download_model("small", progress=False)
    assert not list((cache / "small").glob("weights.hdf5*"))


@pytest.mark.parametrize("content", ["not hdf5", "another model's weights"])
def test_corrupt_weights_are_deleted(cache, server, content):
    if content == "not hdf5":
        server.files[SMALL_WEIGHTS] = os.urandom(len(WEIGHTS))
        message = "cannot read as HDF5"
    else:
        # The real small model's options: the tiny weights do not fit them.
        server.files[SMALL_OPTIONS] = json.dumps(ElmoConfig.preset("small").to_dict()).encode()
        message = "do the options belong to these weights"
    with pytest.raises(
        DownloadError, match=rf"elmo 'small' weights downloaded from .* are not valid.*{message}"
    ):
        download_model("small", progress=False)
    assert not list((cache / "small").glob("weights.hdf5*"))


def test_corrupt_options_are_deleted(cache, server):
    server.files[SMALL_OPTIONS] = b"<html>not json</html>"
    with pytest.raises(
        DownloadError, match=r"'small' options downloaded from .* are not valid, .*: not valid JSON"
    ):
        download_model("small", progress=False)
    assert not list((cache / "small").glob("options.json*"))
    assert not server.weight_requests()


def test_404_names_the_url(cache, server):
    del server.files[SMALL_WEIGHTS]
    with pytest.raises(
        DownloadError,
        match=rf"cannot download elmo 'small' weights from {server.url}{SMALL_WEIGHTS} "
        rf"\(HTTP 404 Not Found\); fetch it yourself and place it at {cache}/small/weights.hdf5$",
    ):
        download_model("small", progress=False)
    assert len(server.weight_requests()) == 1  # not retried


def test_offline_says_where_to_put_the_files(cache, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("ELMO_DOWNLOAD_URL", url)
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        elmo.load("small")
    assert time.monotonic() - t0 < 5  # refused connections are not retried
    assert str(info.value) == (
        f"cannot download elmo 'small' options from {url}{SMALL_OPTIONS} (connection refused); "
        f"fetch it yourself and place it at {cache}/small/options.json, "
        f"and the weights from {url}{SMALL_WEIGHTS} at {cache}/small/weights.hdf5"
    )
    # Files placed by hand are used as they are.
    (cache / "small" / "options.json").write_bytes(OPTIONS)
    (cache / "small" / "weights.hdf5").write_bytes(WEIGHTS)
    assert elmo.load("small").config.lstm.dim == 64


# ---------------------------------------------------------------------- concurrency
def test_threads_share_one_download(cache, server):
    server.settings.update(chunk=32 * 1024, delay=0.02)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(download_model("small", progress=False)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [cache / "small"] * 2
    _assert_cached(cache)
    assert len(server.weight_requests()) == 1


def test_a_process_waits_for_the_lock_then_reuses_the_files(cache, server):
    fcntl = pytest.importorskip("fcntl")
    (cache / "small").mkdir(parents=True)
    with open(cache / "small" / ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # as another process downloading would
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from elmo.download import download_model; print(download_model('small'))",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(server, cache),
        )
        line = _readline(proc.stderr, timeout=60)
        assert "waiting for another process to finish downloading" in line
        # The other process finishes: its files appear, then it lets go of the lock.
        (cache / "small" / "options.json").write_bytes(OPTIONS)
        (cache / "small" / "weights.hdf5").write_bytes(WEIGHTS)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == str(cache / "small")
    assert not server.log


def _readline(stream, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no output from the subprocess"
    return stream.readline().decode()


# ---------------------------------------------------------------------- command line
def test_cli_embed_with_a_model_name(cache, server, tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("the cat sat\nhello\n", encoding="utf-8")
    out = tmp_path / "out.hdf5"
    r = subprocess.run(
        [sys.executable, "-m", "elmo", "embed", str(text), str(out), "--model", "small", "--quiet"],
        capture_output=True,
        timeout=120,
        env=_env(server, cache),
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr == b""  # --quiet also silences the download
    with h5py.File(out, "r") as f:
        assert f["0"].shape == (3, 3, 32)
    _assert_cached(cache)


def test_cli_models_and_download(cache, server, capsys):
    assert cli.main(["models"]) == 0
    assert re.search(r"^small +not cached +English", capsys.readouterr().out, re.M)
    assert cli.main(["download", "small", "--quiet"]) == 0
    assert capsys.readouterr().out == f"{cache / 'small'}\n"
    assert cli.main(["models"]) == 0
    assert re.search(r"^small +cached +English", capsys.readouterr().out, re.M)
    assert cli.main(["download", "small", "--force", "--quiet", "--cache-dir", str(cache)]) == 0
    assert len(server.weight_requests()) == 2
    assert cli.main(["download", "nosuch"]) == 1
    assert "unknown model name 'nosuch'; known: small, medium" in capsys.readouterr().err


def test_cli_unknown_model_name(cache, capsys):
    assert cli.main(["info", "nosuch"]) == 1
    assert "nosuch: no such model directory, nor a known model name (small" in capsys.readouterr().err


# ---------------------------------------------------------------------- URLs
@pytest.mark.parametrize(
    "base",
    [
        "https://s3-us-west-2.amazonaws.com/allennlp/models/elmo",
        "https://allennlp.s3.amazonaws.com/models/elmo",
        "s3://allennlp/models/elmo",
    ],
)
def test_allennlp_published_urls_are_the_registered_model(cache, server, base):
    """AllenNLP's addresses of a released model's files: that model's cache entry (here
    served by the mirror), not a second download."""
    options_url, weights_url = base + SMALL_OPTIONS, base + SMALL_WEIGHTS
    m = elmo.load(options_url, weights_url, progress=False)
    _assert_cached(cache, "small")
    assert [path for path, _, _ in server.log] == [SMALL_OPTIONS, SMALL_WEIGHTS]
    assert m.config.lstm.dim == 64
    elmo.load(options_url, weights_url)  # cached: no more requests
    assert len(server.log) == 2


def test_any_url_pair_goes_through_the_cache(cache, server):
    server.files["/mine/opts.json"] = OPTIONS
    server.files["/mine/w.hdf5"] = WEIGHTS
    options_url, weights_url = server.url + "/mine/opts.json", server.url + "/mine/w.hdf5"
    files = resolve(options_url, weights_url, progress=False)
    assert files.options.parent.parent == cache and files.options.parent.name.startswith("url-")
    assert files.options.read_bytes() == OPTIONS and files.weights.read_bytes() == WEIGHTS
    assert resolve(options_url, weights_url).weights == files.weights and len(server.log) == 2
    # a URL that does not answer: the error names the file and where it belongs
    with pytest.raises(DownloadError, match=r"/mine/missing\.hdf5"):
        resolve(options_url, server.url + "/mine/missing.hdf5", progress=False)


def test_urls_in_the_allennlp_drop_in_and_the_cli(cache, server):
    from elmo.allennlp import Elmo, ElmoEmbedder

    base = "https://allennlp.s3.amazonaws.com/models/elmo"
    options_url, weights_url = base + SMALL_OPTIONS, base + SMALL_WEIGHTS
    assert Elmo(options_url, weights_url, 2).get_output_dim() == 32
    assert ElmoEmbedder(options_file=options_url, weight_file=weights_url).embed_sentence(["a"]).shape == (
        3,
        1,
        32,
    )
    r = subprocess.run(
        [sys.executable, "-m", "elmo", "info", "--options", options_url, "--weights", weights_url, "--json"],
        capture_output=True,
        env=_env(server, cache),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["options"]["lstm"]["dim"] == 64


# ---------------------------------------------------------------------- integrity and limits
def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _register_checked(server: _Server, weights: bytes = WEIGHTS, options: bytes = OPTIONS) -> None:
    """ "tiny": the served files, registered with the sizes and digests of the good ones."""
    register_model(
        "tiny",
        f"{server.url}/t/o.json",
        f"{server.url}/t/w.hdf5",
        size=len(WEIGHTS),
        sha256=_sha256(WEIGHTS),
        options_size=len(OPTIONS),
        options_sha256=_sha256(OPTIONS),
    )
    server.files.update({"/t/o.json": options, "/t/w.hdf5": weights})


def test_registered_digests_are_checked(cache, server, capsys):
    _register_checked(server)
    download_model("tiny")
    _assert_cached(cache, "tiny")
    assert "no SHA-256" not in capsys.readouterr().err


def test_flipped_bit_in_the_weights_is_refused_and_not_cached(cache, server):
    flipped = bytearray(WEIGHTS)
    flipped[len(WEIGHTS) // 2] ^= 0x01  # in the middle of a dataset: the structure still checks out
    _register_checked(server, weights=bytes(flipped))
    url = f"{server.url}/t/w.hdf5"
    with pytest.raises(DownloadError) as info:
        download_model("tiny", progress=False)
    assert str(info.value) == (
        f"the elmo 'tiny' weights downloaded from {url} differ from the registered file (SHA-256 expected "
        f"{_sha256(WEIGHTS)}, found {_sha256(bytes(flipped))}), so they were deleted, not cached"
    )
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == [".lock", "options.json"]
    # The same file under no registered digest passes the structure check: only the digest
    # tells the two apart.
    register_model("tiny", f"{server.url}/t/o.json", url, size=len(WEIGHTS), replace=True)
    download_model("tiny", progress=False)
    assert (cache / "tiny" / "weights.hdf5").read_bytes() == bytes(flipped)


def test_flipped_bit_in_the_options_is_refused(cache, server):
    options = OPTIONS.replace(b'"dim": 64', b'"dim": 65') if b'"dim": 64' in OPTIONS else None
    assert options is not None and len(options) == len(OPTIONS)
    _register_checked(server, options=options)
    with pytest.raises(
        DownloadError, match=r"'tiny' options downloaded from .* differ from the registered file"
    ):
        download_model("tiny", progress=False)
    assert not list((cache / "tiny").glob("options.json*"))
    assert not server.weight_requests()


def test_damaged_partial_file_is_caught_by_the_digest(cache, server):
    """Bytes resumed from an earlier run are covered by the digest too."""
    _register_checked(server)
    (cache / "tiny").mkdir(parents=True)
    (cache / "tiny" / "options.json").write_bytes(OPTIONS)
    partial = bytearray(WEIGHTS[:200_000])
    partial[150_000] ^= 0x80
    (cache / "tiny" / "weights.hdf5.partial").write_bytes(bytes(partial))
    with pytest.raises(DownloadError, match="differ from the registered file"):
        download_model("tiny", progress=False)
    assert not list((cache / "tiny").glob("weights.hdf5*"))
    download_model("tiny", progress=False)  # the next run starts afresh
    _assert_cached(cache, "tiny")


def test_unknown_digests_are_said(cache, server, capsys):
    assert download.released_model("small").weights_sha256 is None  # none published
    download_model("small")
    assert (
        "no SHA-256 digest is registered for the options and weights of 'small': verified by size and "
        "structure only" in capsys.readouterr().err
    )


def test_register_checks_digests():
    with pytest.raises(ValueError, match="sha256 must be 64 hexadecimal digits"):
        register_model("x", "a", "b", sha256="abc")
    with pytest.raises(ValueError, match="options_size must be a positive number"):
        register_model("x", "a", "b", options_size=-1)
    assert "x" not in download.known_models()


def test_endless_options_stop_at_the_cap(cache, server):
    register_model("tiny", f"{server.url}/t/o.json", f"{server.url}/t/w.hdf5")
    server.endless["/t/o.json"] = None
    with pytest.raises(DownloadError) as info:
        download_model("tiny", progress=False)
    assert str(info.value).startswith(
        f"cannot download elmo 'tiny' options from {server.url}/t/o.json (the server sent more than "
        f"{download.MAX_OPTIONS_BYTES} bytes, the limit for options of unknown size"
    )
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == [".lock"]


@pytest.mark.parametrize("announced", [None, 50_000_000])
def test_weights_over_the_cap_are_refused(cache, server, monkeypatch, announced):
    monkeypatch.setattr(download, "MAX_WEIGHTS_BYTES", 2_000_000)
    register_model("tiny", f"{server.url}/t/o.json", f"{server.url}/t/w.hdf5")
    server.files["/t/o.json"] = OPTIONS
    server.endless["/t/w.hdf5"] = announced
    verb = "sent" if announced is None else "announces"
    with pytest.raises(
        DownloadError, match=rf"\(the server {verb} more than 2000000 bytes, the limit for weights"
    ):
        download_model("tiny", progress=False)
    assert not list((cache / "tiny").glob("weights.hdf5*"))


@pytest.mark.parametrize("how", ["parameter", "environment"])
def test_trickling_server_meets_the_deadline_and_the_partial_file_resumes(cache, server, monkeypatch, how):
    server.settings.update(chunk=2000, delay=0.02)  # 450 kB would take 4.5 s
    kwargs = {}
    if how == "parameter":
        kwargs["deadline"] = 0.5
    else:
        monkeypatch.setenv("ELMO_DOWNLOAD_DEADLINE", "0.5")
    t0 = time.monotonic()
    with pytest.raises(
        DownloadError, match=r"not finished within the deadline of 0.5 s .*are kept in .*partial"
    ):
        download_model("small", progress=False, **kwargs)
    assert time.monotonic() - t0 < 3
    kept = (cache / "small" / "weights.hdf5.partial").stat().st_size
    assert 0 < kept < len(WEIGHTS)
    server.settings.update(chunk=64 * 1024, delay=0)
    monkeypatch.delenv("ELMO_DOWNLOAD_DEADLINE", raising=False)
    download_model("small", progress=False)
    _assert_cached(cache)
    assert server.weight_requests()[-1] == (SMALL_WEIGHTS, f"bytes={kept}-", 206)


def test_dropping_server_is_not_retried_forever(cache, server):
    """Each attempt makes progress, so the retry budget never runs out: the deadline stops it."""
    server.settings.update(drops=10**6, drop_after=1000, delay=0.01, chunk=1000)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="not finished within the deadline of 1 s"):
        download_model("small", progress=False, deadline=1)
    assert time.monotonic() - t0 < 4


def test_bad_deadline(cache, monkeypatch):
    monkeypatch.setenv("ELMO_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(
        DownloadError, match="ELMO_DOWNLOAD_DEADLINE: expected a number of seconds, found 'soon'"
    ):
        download_model("small", progress=False)
    with pytest.raises(DownloadError, match="deadline: expected a positive, finite number"):
        download_model("small", progress=False, deadline=float("nan"))


def test_full_disk_keeps_the_partial_file_for_later(cache, server, monkeypatch, capsys):
    def full_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115
        return FullDisk(f, [150_000], short=True) if str(path).endswith(".partial") and "b" in mode else f

    monkeypatch.setattr(download, "open", full_open, raising=False)
    partial = cache / "small" / "weights.hdf5.partial"
    assert cli.main(["download", "small", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"elmo download: error: cannot write {partial}: [Errno {errno.ENOSPC}] No space left on device; "
        "the 150000 bytes written are kept and a later run resumes from them"
    ]
    assert partial.read_bytes() == WEIGHTS[:150_000]
    assert not (cache / "small" / "weights.hdf5").exists()
    monkeypatch.undo()
    monkeypatch.setenv("ELMO_CACHE", str(cache))
    monkeypatch.setenv("ELMO_DOWNLOAD_URL", server.url)
    download_model("small", progress=False)
    _assert_cached(cache)
    assert server.weight_requests()[-1] == (SMALL_WEIGHTS, "bytes=150000-", 206)
