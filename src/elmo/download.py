"""Released ELMo models by name: a registry of their published files and a download cache.

``elmo.load("small")`` and ``elmo embed --model small`` fetch the ``options.json`` and
``weights.hdf5`` that AllenNLP published, once, into a cache, and use them from there.

- The cache is ``$ELMO_CACHE`` if set, else ``$XDG_CACHE_HOME/elmo``, else
  ``~/.cache/elmo``; it holds one directory per model with ``options.json`` and
  ``weights.hdf5``, which :func:`elmo.load` reads like any model directory.
- ``$ELMO_DOWNLOAD_URL`` replaces the published base address (:data:`PUBLISHED_BASE_URL`)
  of the registered URLs: a mirror, or a local server in the tests.
- A file is streamed to ``FILE.partial``, which later attempts (and later runs) resume
  with HTTP ``Range`` requests; dropped connections are retried with backoff. The
  server's validator of the file (a strong ``ETag``, else ``Last-Modified``) is kept
  beside it (``FILE.partial.validator``) and sent as ``If-Range``: if the file changed on
  the server in between, the server sends it whole and the download starts over instead
  of joining two versions. The size is checked against what the server announced (and
  the registry, when it knows it), then the SHA-256 digest (when the registry knows it),
  then the structure (the options parse; the weights' datasets match the options), and
  only then is the file renamed into place. So a file in the cache is complete, and a
  file placed there by hand is used as it is. A file whose digest differs is deleted, not
  cached. No published source states the digests of AllenNLP's released files, so the
  built-in registry has none (``sha256=None``): those are verified by size as announced
  and by structure only, and the download says so.
- Limits: a download stops at the registry's size, else at :data:`MAX_OPTIONS_BYTES` /
  :data:`MAX_WEIGHTS_BYTES`, counted while streaming (an endless body without
  ``Content-Length`` included); and each file has an overall deadline besides the
  per-attempt timeout (``deadline=``, else ``$ELMO_DOWNLOAD_DEADLINE`` seconds, else
  :data:`DEFAULT_DEADLINE`), after which the partial file is kept for a later run to resume.
- A full disk (or any write error) stops at once with the file's name and the errno; the
  partial file keeps what was written and a later run resumes from it.
- A lock per model makes concurrent processes wait for one download and reuse it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmo.atomic import publish
from elmo.config import ElmoConfig
from elmo.errors import ConfigError, DownloadError, WeightsError
from elmo.weights import check_weights

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; see _model_lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_DEADLINE",
    "MAX_OPTIONS_BYTES",
    "MAX_WEIGHTS_BYTES",
    "PUBLISHED_BASE_URL",
    "ReleasedModel",
    "default_cache_dir",
    "download_model",
    "download_urls",
    "is_model_name",
    "is_url",
    "known_models",
    "register_model",
    "released_model",
]

PUBLISHED_BASE_URL = "https://s3-us-west-2.amazonaws.com/allennlp/models/elmo"
OPTIONS_FILE, WEIGHTS_FILE = "options.json", "weights.hdf5"

_CHUNK = 1 << 20
# Caps for files whose size the registry does not know: an options file is a few hundred
# bytes; the largest released weights are about 375 MB.
MAX_OPTIONS_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 4 << 30
# Seconds one file may take in all (attempts, retries and waits), unless set otherwise.
DEFAULT_DEADLINE = 4 * 3600.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Seconds before the first retry; doubled after each failed attempt that made no progress.
_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
# Names become directory names and must never be mistaken for paths.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ReleasedModel:
    """A model known by name: where its two files are published, and what they must be.

    Sizes (bytes) and SHA-256 digests (lowercase hex) are checked when known; ``None``
    means unknown, and the file is verified by structure only.
    """

    name: str
    options_url: str
    weights_url: str
    weights_size: int | None = None
    description: str = ""
    weights_sha256: str | None = None
    options_size: int | None = None
    options_sha256: str | None = None


_REGISTRY: dict[str, ReleasedModel] = {}


def register_model(
    name: str,
    options_url: str,
    weights_url: str,
    size: int | None = None,
    description: str = "",
    *,
    replace: bool = False,
    sha256: str | None = None,
    options_size: int | None = None,
    options_sha256: str | None = None,
) -> ReleasedModel:
    """Make ``name`` loadable with ``elmo.load(name)`` and ``elmo ... --model name``.

    ``size`` and ``sha256`` are the weight file's size in bytes and SHA-256 digest (hex),
    ``options_size`` and ``options_sha256`` the options file's; each is checked after the
    download when given, and a file that differs is deleted instead of cached.
    Registering a known name again needs ``replace=True`` (e.g. to point it at a mirror).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"model name {name!r}: expected letters, digits, '.', '_' or '-', not a path")
    if name in _REGISTRY and not replace:
        raise ValueError(f"model name {name!r} is already registered; pass replace=True to change it")
    for label, n in (("size", size), ("options_size", options_size)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise ValueError(f"model {name!r}: {label} must be a positive number of bytes, not {n!r}")
    for label, digest in (("sha256", sha256), ("options_sha256", options_sha256)):
        if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest.lower())):
            raise ValueError(f"model {name!r}: {label} must be 64 hexadecimal digits, not {digest!r}")
    model = ReleasedModel(
        name,
        options_url,
        weights_url,
        size,
        description,
        sha256.lower() if sha256 else None,
        options_size,
        options_sha256.lower() if options_sha256 else None,
    )
    _REGISTRY[name] = model
    return model


def known_models() -> dict[str, ReleasedModel]:
    """The registered models by name (a copy)."""
    return dict(_REGISTRY)


def is_model_name(name: object) -> bool:
    """Whether ``name`` is a registered model's name."""
    return isinstance(name, str) and name in _REGISTRY


# The released models. URLs: the models table of https://allennlp.org/elmo links these
# files (sizes, parameters and highway layers match the directory names); the same URLs
# are hardcoded as DEFAULT_OPTIONS_FILE / DEFAULT_WEIGHT_FILE (original) in
# allenai/allennlp allennlp/commands/elmo.py, and for small, medium, 5.5B ("large"),
# Portuguese ("pt") and PubMed in ELMoEmbeddings of flairNLP/flair
# flair/embeddings/legacy.py. No source found states the files' exact sizes in bytes (a
# mirror on huggingface.co lists the original weights as "374 MB", rounded) or their
# SHA-256 digests (AllenNLP's own download code checks none), so both are registered as
# unknown (None) rather than guessed: these files are verified by the size the server
# announces and by structure (the HDF5 file opens and its datasets match the options).
for _name, _path, _weights, _description in (
    (
        "small",
        "2x1024_128_2048cnn_1xhighway/elmo_2x1024_128_2048cnn_1xhighway",
        "_weights.hdf5",
        "English, 1B Word Benchmark; 13.6M parameters, LSTM 1024 cells / 128 projection, 1 highway",
    ),
    (
        "medium",
        "2x2048_256_2048cnn_1xhighway/elmo_2x2048_256_2048cnn_1xhighway",
        "_weights.hdf5",
        "English, 1B Word Benchmark; 28.0M parameters, LSTM 2048 cells / 256 projection, 1 highway",
    ),
    (
        "original",
        "2x4096_512_2048cnn_2xhighway/elmo_2x4096_512_2048cnn_2xhighway",
        "_weights.hdf5",
        "English, 1B Word Benchmark; 93.6M parameters, LSTM 4096 cells / 512 projection, 2 highway",
    ),
    (
        "original-5.5b",
        "2x4096_512_2048cnn_2xhighway_5.5B/elmo_2x4096_512_2048cnn_2xhighway_5.5B",
        "_weights.hdf5",
        "English, Wikipedia + WMT news 2008-2012 (5.5B tokens); the original's shape",
    ),
    (
        "pubmed",
        "contributed/pubmed/elmo_2x4096_512_2048cnn_2xhighway",
        "_weights_PubMed_only.hdf5",
        "English biomedical text (PubMed, contributed); the original's shape",
    ),
    (
        "portuguese",
        "contributed/pt/elmo_pt",
        "_weights.hdf5",
        "Portuguese (contributed)",
    ),
):
    register_model(
        _name,
        f"{PUBLISHED_BASE_URL}/{_path}_options.json",
        f"{PUBLISHED_BASE_URL}/{_path}{_weights}",
        description=_description,
        sha256=None,
        options_sha256=None,
    )


def default_cache_dir() -> Path:
    """``$ELMO_CACHE``, else ``$XDG_CACHE_HOME/elmo``, else ``~/.cache/elmo``."""
    env = os.environ.get("ELMO_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "elmo"


def _url(url: str) -> str:
    """``url`` with the published base replaced by ``$ELMO_DOWNLOAD_URL`` when set."""
    mirror = os.environ.get("ELMO_DOWNLOAD_URL")
    if mirror and url.startswith(PUBLISHED_BASE_URL + "/"):
        return mirror.rstrip("/") + url[len(PUBLISHED_BASE_URL) :]
    return url


def released_model(name: str) -> ReleasedModel:
    """The registered model called ``name``; :class:`ValueError` listing the known names if none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(_REGISTRY)}") from None


def not_found_message(name_or_path: object) -> str:
    """The error for a model that is neither an existing path nor a registered name."""
    text = os.fspath(name_or_path)  # type: ignore[call-overload]
    message = f"{text}: no such model directory"
    # A bare word was more likely meant as a name than as a directory.
    if isinstance(name_or_path, str) and "/" not in text and os.sep not in text:
        message += f", nor a known model name ({', '.join(_REGISTRY)})"
    return message


def download_model(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool | None = None,
    timeout: float = 30.0,
    retries: int = 5,
    deadline: float | None = None,
) -> Path:
    """Download a registered model into the cache (if not there yet); its directory.

    ``progress``: a progress bar on standard error (``None``: when it is a terminal, a
    line of text otherwise; ``False``: nothing). ``timeout``: seconds a connection may
    stay silent. ``retries``: attempts after one that fails without
    any progress (one that made progress resumes at once). ``deadline``: seconds each
    file may take in all (``None``: ``$ELMO_DOWNLOAD_DEADLINE``, else
    :data:`DEFAULT_DEADLINE`); the partial file is kept for a later run. ``force``:
    download again even if the files are cached.

    Raises :class:`DownloadError` naming the model, the URL and the path where the
    file belongs, so that it can be fetched by other means.
    """
    return _fetch_model(released_model(name), cache_dir, force, progress, timeout, retries, deadline)


def _deadline(deadline: float | None) -> float:
    """Seconds per file: ``deadline``, else ``$ELMO_DOWNLOAD_DEADLINE``, else the default."""
    source = "deadline"
    if deadline is None:
        text = os.environ.get("ELMO_DOWNLOAD_DEADLINE")
        if not text:
            return DEFAULT_DEADLINE
        source = "ELMO_DOWNLOAD_DEADLINE"
        try:
            deadline = float(text)
        except ValueError:
            raise DownloadError(
                f"ELMO_DOWNLOAD_DEADLINE: expected a number of seconds, found {text!r}"
            ) from None
    if not deadline > 0 or deadline == float("inf"):
        raise DownloadError(f"{source}: expected a positive, finite number of seconds, found {deadline!r}")
    return deadline


def _fetch_model(
    model: ReleasedModel,
    cache_dir: str | os.PathLike[str] | None,
    force: bool,
    progress: bool | None,
    timeout: float,
    retries: int,
    deadline: float | None = None,
) -> Path:
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    directory = directory / model.name
    job = _Download(model, directory, progress, timeout, retries, _deadline(deadline))
    if not force and job.options.is_file() and job.weights.is_file():
        return directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"cannot create the elmo model cache {directory}: {e.strerror}; "
            "set ELMO_CACHE to a writable directory"
        ) from None
    with _model_lock(directory, job.say):
        if force:
            for path in (job.options, job.weights):
                path.unlink(missing_ok=True)
        # Another process may have finished the download while we waited for the lock.
        if not job.options.is_file() or not job.weights.is_file():
            job.run()
    return directory


_URL_SCHEMES = ("http://", "https://", "s3://")
# Where AllenNLP published the released files: the registry's URLs under any of these
# bases name the same files (AllenNLP's code and docs use each of them).
_PUBLISHED_BASES = (
    PUBLISHED_BASE_URL,
    "https://allennlp.s3.amazonaws.com/models/elmo",
    "http://s3-us-west-2.amazonaws.com/allennlp/models/elmo",
    "https://s3.amazonaws.com/allennlp/models/elmo",
    "s3://allennlp/models/elmo",
)


def is_url(value: object) -> bool:
    """Whether ``value`` is a URL this package can download (http, https, s3)."""
    return isinstance(value, str) and value.startswith(_URL_SCHEMES)


def _published_path(url: str) -> str | None:
    for base in _PUBLISHED_BASES:
        if url.startswith(base + "/"):
            return url[len(base) + 1 :]
    return None


def _registered_for(options_url: str, weights_url: str) -> str | None:
    """The registered model whose published files these URLs name, if any."""
    wanted = (_published_path(options_url), _published_path(weights_url))
    if None in wanted:
        return None
    for model in _REGISTRY.values():
        if (_published_path(model.options_url), _published_path(model.weights_url)) == wanted:
            return model.name
    return None


def download_urls(
    options_url: str,
    weights_url: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool | None = None,
    timeout: float = 30.0,
    retries: int = 5,
    deadline: float | None = None,
) -> Path:
    """Download a model given as the URLs of its two files; its cache directory.

    URLs of a registered model's published files (under any of AllenNLP's addresses)
    are that model's cache entry; other URLs get an entry of their own, named by a digest
    of the two URLs. Downloads resume, retry, are verified and locked as in
    :func:`download_model`. ``s3://`` URLs are read over HTTPS from the bucket's address.
    """
    name = _registered_for(options_url, weights_url)
    if name is not None:
        return download_model(
            name, cache_dir, progress=progress, timeout=timeout, retries=retries, deadline=deadline
        )
    digest = hashlib.sha256(f"{options_url}\n{weights_url}".encode()).hexdigest()[:16]
    model = ReleasedModel(
        f"url-{digest}", _https(options_url), _https(weights_url), None, "downloaded by URL"
    )
    return _fetch_model(model, cache_dir, False, progress, timeout, retries, deadline)


def _https(url: str) -> str:
    """An ``s3://BUCKET/KEY`` URL as the bucket's public HTTPS address."""
    if url.startswith("s3://"):
        bucket, _, key = url[len("s3://") :].partition("/")
        return f"https://{bucket}.s3.amazonaws.com/{key}"
    return url


@contextlib.contextmanager
def _model_lock(directory: Path, say: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.lock`` (blocking) where the OS has flock."""
    if fcntl is None:
        yield
        return
    with open(directory / ".lock", "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"elmo: waiting for another process to finish downloading into {directory}")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without locks (some NFS mounts): go on unlocked
        # flock locks belong to the open file: closing it (also when a thread of this
        # process raises) releases the lock.
        yield


class _Fatal(Exception):
    """A failure that retrying will not fix (HTTP 404, a size the registry contradicts)."""


class _OutOfTime(_Fatal):
    """The file's overall deadline passed; the partial file is kept."""


class _Transient(Exception):
    """A failure worth retrying (the connection closed early, the server misbehaved)."""


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, urllib.error.URLError):
        if not isinstance(e.reason, BaseException):
            return False  # e.g. an unknown URL scheme
        e = e.reason
    # Refused connections and unknown hosts mean offline or a wrong URL: fail at once.
    hopeless = (ConnectionRefusedError, socket.gaierror, ssl.SSLCertVerificationError, FileNotFoundError)
    if isinstance(e, hopeless):
        return False
    return isinstance(e, (_Transient, OSError, http.client.HTTPException, urllib.error.URLError))


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else Exception(str(e.reason))
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    if isinstance(e, http.client.IncompleteRead):
        return "connection closed before the end of the file"
    return str(e) or type(e).__name__


def _validator_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".validator")


def _discard(partial: Path) -> None:
    """Delete a partial file and the validator kept for it."""
    partial.unlink(missing_ok=True)
    _validator_path(partial).unlink(missing_ok=True)


def _read_validator(partial: Path) -> str | None:
    """The validator kept for ``partial`` (None: none kept, or unreadable)."""
    try:
        return _validator_path(partial).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _write_validator(partial: Path, headers: Any) -> None:
    """Keep the response's validator for a partial file that starts now (or forget an old one).

    ``If-Range`` needs a strong validator: an ``ETag`` not marked weak (``W/``), else the
    ``Last-Modified`` date."""
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    value = etag if etag and not etag.startswith("W/") else modified
    path = _validator_path(partial)
    try:
        if value and value.isascii() and "\n" not in value:
            path.write_text(value + "\n", encoding="ascii")
        else:
            path.unlink(missing_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot write {path}: {e.strerror}") from None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of ``bytes FIRST-LAST/TOTAL`` or ``bytes */TOTAL``."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total != "*" else None)


def _size(n: int | None) -> str:
    return "unknown size" if n is None else f"{n / 2**20:.1f} MiB"


def _errno(e: OSError) -> str:
    return f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _write_all(out: Any, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file (which may take less than asked)."""
    view = memoryview(data)
    while view:
        n = out.write(view)
        view = view[n:]


class _Download:
    """Fetching one model's two files into its cache directory (under its lock)."""

    def __init__(
        self,
        model: ReleasedModel,
        directory: Path,
        progress: bool | None,
        timeout: float,
        retries: int,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.model, self.directory = model, directory
        self.options, self.weights = directory / OPTIONS_FILE, directory / WEIGHTS_FILE
        self.progress, self.timeout, self.retries = progress, timeout, retries
        self.deadline = deadline
        self.ends = time.monotonic() + deadline  # of the file being fetched
        # Without a lock, concurrent processes must not append to the same partial file.
        self.partial_suffix = ".partial" if fcntl is not None else f".{os.getpid()}.partial"

    def say(self, message: str) -> None:
        if self.progress is not False:
            print(message, file=sys.stderr, flush=True)

    def run(self) -> None:
        self.say(f"elmo: downloading model {self.model.name!r} into {self.directory}")
        m = self.model
        unknown = [
            kind
            for kind, digest in (("options", m.options_sha256), ("weights", m.weights_sha256))
            if digest is None
        ]
        if unknown:
            self.say(
                f"elmo: no SHA-256 digest is registered for the {' and '.join(unknown)} of {m.name!r}: "
                "verified by size and structure only"
            )
        if not self.options.is_file():
            self.fetch(
                "options",
                _url(m.options_url),
                self.options,
                m.options_size,
                m.options_sha256,
                self._check_options,
            )
        if not self.weights.is_file():
            config = ElmoConfig.from_json(self.options)

            def check(path: Path) -> None:
                check_weights(config, path)

            self.fetch("weights", _url(m.weights_url), self.weights, m.weights_size, m.weights_sha256, check)

    @staticmethod
    def _check_options(path: Path) -> None:
        ElmoConfig.from_json(path)

    # ------------------------------------------------------------------ one file
    def fetch(
        self,
        kind: str,
        url: str,
        dest: Path,
        size: int | None,
        sha256: str | None,
        check: Callable[[Path], None],
    ) -> None:
        """Download ``url`` to ``dest`` through a partial file: resume, retry, verify, rename."""
        partial = dest.with_name(dest.name + self.partial_suffix)
        self.ends = time.monotonic() + self.deadline
        failures = 0
        while True:
            before = partial.stat().st_size if partial.exists() else 0
            try:
                if time.monotonic() >= self.ends:
                    raise _OutOfTime(self._out_of_time(partial))
                self._attempt(kind, url, partial, size)
                break
            except _Fatal as e:
                raise self._error(kind, url, dest, str(e)) from None
            except DownloadError:
                raise
            except (_Transient, OSError, http.client.HTTPException) as e:
                if not _is_transient(e):
                    raise self._error(kind, url, dest, _reason(e)) from None
                progressed = partial.exists() and partial.stat().st_size > before
                failures = 0 if progressed else failures + 1
                if failures > self.retries:
                    raise self._error(
                        kind, url, dest, f"{_reason(e)}; gave up after {failures} attempts"
                    ) from None
                delay = min(_BACKOFF * 2**failures, _MAX_BACKOFF, max(self.ends - time.monotonic(), 0.0))
                self.say(f"elmo: {kind} of {self.model.name!r}: {_reason(e)}; retrying in {delay:.1f} s")
                time.sleep(delay)
        if sha256 is not None:
            try:
                found = _sha256_of(partial)
            except OSError as e:
                raise DownloadError(f"cannot read {partial}: {_errno(e)}") from None
            if found != sha256:
                _discard(partial)
                raise DownloadError(
                    f"the elmo {self.model.name!r} {kind} downloaded from {url} differ from the registered "
                    f"file (SHA-256 expected {sha256}, found {found}), so they were deleted, not cached"
                )
        try:
            check(partial)
        except (ConfigError, WeightsError) as e:
            _discard(partial)
            raise DownloadError(
                f"the elmo {self.model.name!r} {kind} downloaded from {url} are not valid, so they were "
                f"deleted ({e}); is {url} the right address?"
            ) from None
        try:
            publish(partial, dest)
        except OSError as e:
            raise DownloadError(f"cannot move {partial} to {dest}: {_errno(e)}") from None
        _validator_path(partial).unlink(missing_ok=True)

    def _out_of_time(self, partial: Path) -> str:
        have = partial.stat().st_size if partial.exists() else 0
        kept = f"; the {have} bytes so far are kept in {partial} and resume next time" if have else ""
        return (
            f"not finished within the deadline of {self.deadline:g} s (set ELMO_DOWNLOAD_DEADLINE to allow "
            f"longer){kept}"
        )

    def _limit(self, kind: str, size: int | None) -> int:
        if size is not None:
            return size
        return MAX_OPTIONS_BYTES if kind == "options" else MAX_WEIGHTS_BYTES

    def _attempt(self, kind: str, url: str, partial: Path, size: int | None) -> None:
        """One request: append to ``partial`` until the file is complete, or raise."""
        have = partial.stat().st_size if partial.exists() else 0
        if size is not None and have > size:
            _discard(partial)
            have = 0
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "elmo-embeddings"})
        except ValueError as e:
            raise _Fatal(f"not a URL: {e}") from None
        validator = None
        if have:
            request.add_header("Range", f"bytes={have}-")
            validator = _read_validator(partial)
            if validator:
                request.add_header("If-Range", validator)
        timeout = max(min(self.timeout, self.ends - time.monotonic()), 0.01)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and have:
                # "Range not satisfiable": the partial file is already whole, or bigger
                # than the file (a different version): start over then.
                _, total = _content_range(e.headers.get("Content-Range"))
                if total == have and size in (None, have):
                    return
                _discard(partial)
                raise _Transient("the server could not resume the partial file; starting over") from None
            if e.code in (408, 429) or e.code >= 500:
                raise _Transient(f"HTTP {e.code} {e.reason}") from None
            raise _Fatal(f"HTTP {e.code} {e.reason}") from None
        with response:
            # file: URLs have no status; treat them like a plain 200.
            status = getattr(response, "status", None) or 200
            if status == 206:
                first, total = _content_range(response.headers.get("Content-Range"))
                if first != have:
                    _discard(partial)
                    raise _Transient(f"the server resumed at byte {first}, not {have}; starting over")
            else:
                if have and validator:
                    self.say(f"elmo: {url} changed on the server since the partial download; starting over")
                elif have:
                    self.say(f"elmo: the server of {url} does not resume downloads; starting over")
                have = 0
                _write_validator(partial, response.headers)
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            if size is not None and total is not None and total != size:
                _discard(partial)
                raise _Fatal(f"the server announces {total} bytes, the registry expects {size}")
            limit = self._limit(kind, size)
            if total is not None and total > limit:
                _discard(partial)
                raise _Fatal(self._too_big(kind, limit, "announces"))
            expected = total if total is not None else size
            self._stream(kind, response, partial, have, expected, size)

    def _too_big(self, kind: str, limit: int, verb: str) -> str:
        return (
            f"the server {verb} more than {limit} bytes, the limit for {kind} of unknown size "
            f"(elmo.download.MAX_{kind.upper()}_BYTES)"
        )

    def _stream(
        self, kind: str, response: Any, partial: Path, have: int, expected: int | None, size: int | None
    ) -> None:
        read = getattr(response, "read1", response.read)
        limit = self._limit(kind, size)
        # Opened apart from the with below so that a file error is not taken for a network one;
        # unbuffered, so that a full disk is reported by the write that hit it.
        try:
            out = open(partial, "ab" if have else "wb", buffering=0)  # noqa: SIM115
        except OSError as e:
            raise DownloadError(f"cannot write {partial}: {_errno(e)}") from None
        too_big = False
        with out, self._bar(kind, expected, have) as bar:
            while True:
                # read1 returns what has arrived, so the bar moves on a slow connection.
                chunk = read(_CHUNK)
                if not chunk:
                    break
                if have + len(chunk) > limit:
                    too_big = True
                    break
                try:
                    _write_all(out, chunk)
                except OSError as e:
                    kept = (
                        f"; the {partial.stat().st_size} bytes written are kept and a later run resumes "
                        "from them"
                        if partial.exists()
                        else ""
                    )
                    raise DownloadError(f"cannot write {partial}: {_errno(e)}{kept}") from None
                have += len(chunk)
                bar.update(len(chunk))
                # A server that trickles bytes never trips the per-read timeout.
                if time.monotonic() >= self.ends:
                    raise _OutOfTime(self._out_of_time(partial))
        if too_big:
            _discard(partial)
            if size is not None:
                raise _Fatal(f"the server sent more than the {size} bytes the registry expects")
            raise _Fatal(self._too_big(kind, limit, "sent"))
        if expected is not None and have < expected:
            raise _Transient(f"connection closed after {have} of {expected} bytes")

    @contextlib.contextmanager
    def _bar(self, kind: str, total: int | None, initial: int) -> Iterator[Any]:
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if kind != "weights" or not show:
            if kind == "weights" and self.progress is None:
                resuming = f", resuming after {_size(initial)}" if initial else ""
                self.say(f"elmo: fetching the {self.model.name!r} weights ({_size(total)}){resuming}")
            yield _NoBar()
            return
        from tqdm import tqdm

        with tqdm(
            total=total,
            initial=initial,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"{self.model.name} weights",
            file=sys.stderr,
            dynamic_ncols=True,
        ) as bar:
            yield bar

    def _error(self, kind: str, url: str, dest: Path, reason: str) -> DownloadError:
        message = (
            f"cannot download elmo {self.model.name!r} {kind} from {url} ({reason}); "
            f"fetch it yourself and place it at {dest}"
        )
        if kind == "options" and not self.weights.is_file():
            message += f", and the weights from {_url(self.model.weights_url)} at {self.weights}"
        return DownloadError(message)


class _NoBar:
    def update(self, n: int) -> None:
        pass
