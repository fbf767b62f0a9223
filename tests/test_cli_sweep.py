"""Every command, fed bad input on purpose: one line on standard error naming what is wrong.

A table of hostile inputs (wrong types, NaN, huge numbers, deep nesting, empty and binary
files, corrupt HDF5, links, special files, missing files, bad option values), each run
through the real command line: in-process through :func:`elmo.cli.main` (what a
subprocess would run, minus the start-up), and the cases marked ``subprocess`` also as
``python -m elmo``. Each case checks the exit status (1: bad input; 2: bad arguments),
that standard error is exactly one line (argparse's usage line aside) naming the file,
field or option, and that no traceback or raw exception name reaches the user.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import tiny_model
from elmo.cli import main

TINY = tiny_model()
OPTIONS = json.loads((TINY / "options.json").read_text())


# --------------------------------------------------------------------------- what each case sets up
def _options(**changes: object) -> Callable[[Path], None]:
    """Write ``opts.json``: the tiny model's options with ``section__key`` values replaced."""

    def setup(tmp: Path) -> None:
        data = json.loads(json.dumps(OPTIONS))
        for dotted, value in changes.items():
            *path, key = dotted.split("__")
            node = data
            for part in path:
                node = node[part]
            node[key] = value
        (tmp / "opts.json").write_text(json.dumps(data))

    return setup


def _raw(name: str, content: bytes | str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def _link(name: str, target: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).symlink_to(target)

    return setup


def _fifo(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        os.mkfifo(tmp / name)

    return setup


def _locked(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_text("{}")
        (tmp / name).chmod(0)

    return setup


def _weights(change: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    """Write ``w.hdf5``: the tiny model's weights with ``change`` applied."""

    def setup(tmp: Path) -> None:
        shutil.copy(TINY / "weights.hdf5", tmp / "w.hdf5")
        with h5py.File(tmp / "w.hdf5", "r+") as h5:
            change(h5)

    return setup


def _retype(h5: h5py.File) -> None:
    del h5["CNN_proj/b_proj"]
    h5["CNN_proj/b_proj"] = np.array([b"x"] * OPTIONS["lstm"]["projection_dim"])


def _reshape(h5: h5py.File) -> None:
    del h5["CNN_proj/b_proj"]
    h5["CNN_proj/b_proj"] = np.zeros(3, np.float32)


def _nan(h5: h5py.File) -> None:
    h5["CNN_proj/b_proj"][0] = np.nan


def _group(h5: h5py.File) -> None:
    del h5["CNN_proj/b_proj"]
    h5.create_group("CNN_proj/b_proj")


def _extra(h5: h5py.File) -> None:
    h5["surprise"] = np.zeros(3, np.float32)


def _corrupt_middle(tmp: Path) -> None:
    data = bytearray((TINY / "weights.hdf5").read_bytes())
    for start in range(0, len(data), 4096):  # the first bytes of every page: headers and data
        data[start + 8 : start + 40] = b"\xa5" * 32
    (tmp / "w.hdf5").write_bytes(bytes(data))


def _corrupt_root_group(tmp: Path) -> None:
    # Bytes 128-191 of the tiny model's file hold the root group's B-tree: h5py then fails
    # with "Object visitation failed (wrong B-tree signature)", naming no file.
    data = bytearray((TINY / "weights.hdf5").read_bytes())
    data[128:192] = b"\xa5" * 64
    (tmp / "w.hdf5").write_bytes(bytes(data))


def _model_dir(tmp: Path) -> None:
    (tmp / "m").mkdir()
    shutil.copy(TINY / "options.json", tmp / "m" / "options.json")
    shutil.copy(TINY / "weights.hdf5", tmp / "m" / "weights.hdf5")


def _lm_dir(head: Callable[[h5py.File], None] | None = None) -> Callable[[Path], None]:
    """``lm/``: the tiny model as an exported language model (an LM head and a vocabulary of 5
    words); ``head`` writes another ``lm_head.hdf5``."""

    def setup(tmp: Path) -> None:
        _model_dir(tmp)
        (tmp / "m").rename(tmp / "lm")
        (tmp / "lm" / "vocab.txt").write_text("<S>\n</S>\n<UNK>\na\nb\n")
        with h5py.File(tmp / "lm" / "lm_head.hdf5", "w") as h5:
            if head is None:
                h5["softmax/W"] = np.zeros((5, OPTIONS["lstm"]["projection_dim"]), np.float32)
                h5["softmax/b"] = np.zeros(5, np.float32)
            else:
                head(h5)
        (tmp / "in.txt").write_text("a b\nb a a\n")

    return setup


def _nan_head(h5: h5py.File) -> None:
    h5["softmax/W"] = np.full((5, OPTIONS["lstm"]["projection_dim"]), np.nan, np.float32)
    h5["softmax/b"] = np.zeros(5, np.float32)


def _text_head(h5: h5py.File) -> None:
    h5["softmax/W"] = np.array([b"a"] * 5)
    h5["softmax/b"] = np.zeros(5, np.float32)


def _in_txt(tmp: Path) -> None:
    (tmp / "in.txt").write_text("a b\n")


def _vocab(tmp: Path) -> None:
    (tmp / "vocab.txt").write_text("<S>\n</S>\n<UNK>\na\nb\n")


def _all(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)

    return setup


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: str  # a text the one line must hold (the file, field or option named)
    setup: Callable[[Path], None] | None = None
    status: int = 1
    subprocess: bool = False  # also run as `python -m elmo` (warnings, start-up, real stderr)
    needs_user: bool = False  # a permission case: root reads any file
    marks: list = field(default_factory=list)


# The weights and options of the tiny model, as arguments.
W = str(TINY / "weights.hdf5")
O = str(TINY / "options.json")  # noqa: E741
WITH_OPTS = ["--options", "opts.json", "--weights", W]
WITH_W = ["--options", O, "--weights", "w.hdf5"]

CASES = [
    # ---------------------------------------------------------------- options.json (elmo info)
    Case("options-empty", ["info", *WITH_OPTS], "opts.json: not valid JSON", _raw("opts.json", "")),
    Case(
        "options-binary",
        ["info", *WITH_OPTS],
        "opts.json: options file is not UTF-8",
        _raw("opts.json", b"\xff\xfe\x00\x81"),
    ),
    Case(
        "options-list", ["info", *WITH_OPTS], "opts.json: expected a JSON object", _raw("opts.json", "[1, 2]")
    ),
    Case(
        "options-no-lstm",
        ["info", *WITH_OPTS],
        "opts.json: missing key 'lstm'",
        _raw("opts.json", '{"char_cnn": {}}'),
    ),
    Case(
        "options-deep",
        ["info", *WITH_OPTS],
        "opts.json: JSON nested too deeply",
        _raw("opts.json", "[" * 100_000),
        subprocess=True,
    ),
    Case(
        "options-long-int",
        ["info", *WITH_OPTS],
        "opts.json: not valid JSON",
        _raw("opts.json", '{"lstm": {"dim": ' + "9" * 5000 + "}}"),
    ),
    Case(
        "options-dim-string",
        ["info", *WITH_OPTS],
        "opts.json: lstm.dim: expected an integer",
        _options(lstm__dim="64"),
    ),
    Case(
        "options-dim-bool",
        ["info", *WITH_OPTS],
        "opts.json: lstm.dim: expected an integer, found true",
        _options(lstm__dim=True),
    ),
    Case(
        "options-dim-1e7",
        ["info", *WITH_OPTS],
        "opts.json: lstm.dim: expected an integer <= 65536",
        _options(lstm__dim=10**7),
    ),
    Case(
        "options-dim-negative",
        ["info", *WITH_OPTS],
        "opts.json: lstm.dim: expected an integer >= 1",
        _options(lstm__dim=-5),
    ),
    Case(
        "options-layers-1e6",
        ["info", *WITH_OPTS],
        "opts.json: lstm.n_layers: expected an integer <= 64",
        _options(lstm__n_layers=10**6),
    ),
    Case(
        "options-chars-1e9",
        ["info", *WITH_OPTS],
        "char_cnn.max_characters_per_token: expected an integer <= 2048",
        _options(char_cnn__max_characters_per_token=10**9),
    ),
    Case(
        "options-clip-nan",
        ["info", *WITH_OPTS],
        "opts.json: lstm.cell_clip: expected a finite positive number",
        _options(lstm__cell_clip=float("nan")),
    ),
    Case(
        "options-clip-inf",
        ["info", *WITH_OPTS],
        "opts.json: lstm.proj_clip: expected a finite positive number",
        _options(lstm__proj_clip=float("inf")),
    ),
    Case(
        "options-clip-zero",
        ["info", *WITH_OPTS],
        "opts.json: lstm.cell_clip: expected a positive number",
        _options(lstm__cell_clip=0),
    ),
    Case(
        "options-skip-int",
        ["info", *WITH_OPTS],
        "lstm.use_skip_connections: expected true or false",
        _options(lstm__use_skip_connections=1),
    ),
    Case(
        "options-filters-huge",
        ["info", *WITH_OPTS],
        "opts.json: char_cnn.filters: expected at most 256",
        _options(char_cnn__filters=[[1, 4]] * 50_000),
    ),
    Case(
        "options-filter-maps-1e9",
        ["info", *WITH_OPTS],
        "opts.json: char_cnn.filters[0]",
        _options(char_cnn__filters=[[1, 10**9]]),
    ),
    Case(
        "options-filters-not-list",
        ["info", *WITH_OPTS],
        "opts.json: char_cnn.filters: expected a list",
        _options(char_cnn__filters={"a": 1}),
    ),
    Case(
        "options-embedding-null",
        ["info", *WITH_OPTS],
        "opts.json: char_cnn.embedding: expected a JSON object",
        _options(char_cnn__embedding=None),
    ),
    Case(
        "options-petabytes",
        ["info", *WITH_OPTS],
        "opts.json: the options describe a biLM of",
        _options(lstm__dim=65536, lstm__projection_dim=65536, lstm__n_layers=64),
    ),
    Case(
        "options-dev-zero",
        ["info", "--options", "/dev/zero", "--weights", W],
        "/dev/zero: is a character device",
        subprocess=True,
    ),
    Case("options-directory", ["info", "--options", ".", "--weights", W], ".: is a directory", None),
    Case("options-fifo", ["info", *WITH_OPTS], "opts.json: is a FIFO", _fifo("opts.json"), subprocess=True),
    Case(
        "options-link-loop",
        ["info", *WITH_OPTS],
        "opts.json: cannot open the options file: Too many levels of symbolic links",
        _link("opts.json", "opts.json"),
    ),
    Case(
        "options-dangling-link",
        ["info", *WITH_OPTS],
        "opts.json: options file not found",
        _link("opts.json", "gone.json"),
    ),
    Case(
        "options-unreadable",
        ["info", *WITH_OPTS],
        "opts.json: cannot open the options file: Permission denied",
        _locked("opts.json"),
        needs_user=True,
    ),
    Case("options-missing", ["info", *WITH_OPTS], "opts.json: options file not found"),
    Case(
        "options-sparse-10g",
        ["info", *WITH_OPTS],
        "opts.json: options file of 10240 MiB, larger than",
        lambda t: os.truncate(_touch(t / "opts.json"), 10 * 2**30),
    ),
    Case(
        "options-not-these-weights",
        ["info", *WITH_OPTS],
        "dataset 'char_embed': expected shape (261, 5)",
        _options(char_cnn__embedding__dim=5),
    ),
    Case(
        "options-dim-vs-weights",
        ["info", *WITH_OPTS],
        "dataset 'CNN_proj/W_proj': expected shape (124, 512)",
        _options(lstm__dim=4096, lstm__projection_dim=512),
        subprocess=True,
    ),
    # ---------------------------------------------------------------- weights.hdf5
    Case("weights-empty", ["info", *WITH_W], "w.hdf5: cannot read as HDF5", _raw("w.hdf5", b"")),
    Case("weights-text", ["info", *WITH_W], "w.hdf5: cannot read as HDF5", _raw("w.hdf5", "hello\n")),
    Case(
        "weights-truncated",
        ["info", *WITH_W],
        "w.hdf5: cannot read as HDF5",
        lambda t: (t / "w.hdf5").write_bytes((TINY / "weights.hdf5").read_bytes()[:3000]),
    ),
    Case("weights-corrupt", ["info", *WITH_W], "w.hdf5", _corrupt_middle, subprocess=True),
    Case(
        "weights-corrupt-structure",
        ["info", *WITH_W],
        "w.hdf5: cannot read the HDF5 structure",
        _corrupt_root_group,
    ),
    Case(
        "weights-wrong-dtype",
        ["info", *WITH_W],
        "w.hdf5: dataset 'CNN_proj/b_proj': expected float32 values",
        _weights(_retype),
    ),
    Case(
        "weights-wrong-shape",
        ["info", *WITH_W],
        "w.hdf5: dataset 'CNN_proj/b_proj': expected shape",
        _weights(_reshape),
    ),
    Case("weights-nan", ["info", *WITH_W], "w.hdf5: dataset 'CNN_proj/b_proj': contains NaN", _weights(_nan)),
    Case(
        "weights-group-not-dataset",
        ["info", *WITH_W],
        "w.hdf5: missing dataset 'CNN_proj/b_proj'",
        _weights(_group),
    ),
    Case(
        "weights-extra-dataset",
        ["info", *WITH_W],
        "w.hdf5: dataset 'surprise' (3,) not described by the options",
        _weights(_extra),
    ),
    Case("weights-directory", ["info", "--options", O, "--weights", "."], ".: is a directory"),
    Case(
        "weights-dev-zero",
        ["info", "--options", O, "--weights", "/dev/zero"],
        "/dev/zero: is a character device",
    ),
    Case("weights-fifo", ["info", *WITH_W], "w.hdf5: is a FIFO", _fifo("w.hdf5")),
    Case(
        "weights-link-loop",
        ["info", *WITH_W],
        "w.hdf5: cannot open the weight file: Too many levels",
        _link("w.hdf5", "w.hdf5"),
    ),
    Case("weights-missing", ["info", *WITH_W], "w.hdf5: weight file not found"),
    Case(
        "weights-unreadable",
        ["info", *WITH_W],
        "w.hdf5: cannot open the weight file: Permission denied",
        _locked("w.hdf5"),
        needs_user=True,
    ),
    # ---------------------------------------------------------------- model sources
    Case("model-missing", ["info", "nowhere"], "nowhere: no such model directory"),
    Case(
        "model-options-fifo",
        ["info", "m"],
        "m/options.json: is a FIFO",
        _all(_model_dir, lambda t: (t / "m" / "options.json").unlink(), _fifo("m/options.json")),
    ),
    Case(
        "model-weights-broken-link",
        ["info", "m"],
        "m/weights.hdf5: weight file not found",
        _all(_model_dir, lambda t: (t / "m" / "weights.hdf5").unlink(), _link("m/weights.hdf5", "gone")),
    ),
    Case("model-text-file", ["info", "in.txt"], "in.txt: pass the weights too", _in_txt),
    Case("model-empty-dir", ["info", "m"], "m: expected options.json", lambda t: (t / "m").mkdir()),
    Case(
        "model-bad-mix",
        ["info", "m"],
        "hub_mix.json: not a layer mix",
        _all(_model_dir, _raw("m/hub_mix.json", '{"weights": {"a": 1}}')),
    ),
    Case(
        "model-mix-nan",
        ["info", "m"],
        "hub_mix.json: layer mix weights and gamma must be finite",
        _all(_model_dir, _raw("m/hub_mix.json", '{"weights": [1, 1, 1], "gamma": NaN}')),
    ),
    Case(
        "model-mix-dev-zero",
        ["info", "m"],
        "hub_mix.json: is a character device",
        _all(_model_dir, _link("m/hub_mix.json", "/dev/zero")),
    ),
    Case(
        "model-and-options",
        ["info", "m", *WITH_OPTS],
        "give either --model or --options",
        _model_dir,
        status=2,
    ),
    Case(
        "options-without-weights", ["info", "--options", O], "--options and --weights go together", status=2
    ),
    Case("model-url-alone", ["info", "https://example.invalid/w.hdf5"], "a URL names one file"),
    # ---------------------------------------------------------------- elmo embed (arguments and model)
    Case(
        "embed-bad-options",
        ["embed", "in.txt", "out.hdf5", *WITH_OPTS, "-q"],
        "opts.json: lstm.dim: expected an integer <= 65536",
        _all(_in_txt, _options(lstm__dim=10**8)),
    ),
    Case(
        "embed-shard-size-0",
        ["embed", "in.txt", "out.hdf5", "--shard-size", "0"],
        "--shard-size: expected a positive integer",
        _in_txt,
        status=2,
    ),
    Case(
        "embed-batch-not-int",
        ["embed", "in.txt", "out.hdf5", "--batch-size", "ten"],
        "--batch-size: invalid int value: 'ten'",
        _in_txt,
        status=2,
    ),
    Case(
        "embed-device-bogus",
        ["embed", "in.txt", "out.hdf5", "--device", "nonsense", "-q"],
        "--device: expected a torch device such as cpu or cuda:0, found 'nonsense'",
        _in_txt,
        status=2,
    ),
    Case(
        "embed-device-absent",
        ["embed", "in.txt", "out.hdf5", "--device", "cuda:99", "-q"],
        "--device cuda:99: ",
        _in_txt,
        status=2,
    ),
    Case(
        "embed-device-meta",
        ["embed", "in.txt", "out.hdf5", "--device", "xla", "-q"],
        "--device xla: no xla device is available",
        _in_txt,
        status=2,
    ),
    Case(
        "embed-cache-negative",
        ["embed", "in.txt", "out.hdf5", "--cache-size", "-3"],
        "--cache-size: expected an integer >= 0",
        _in_txt,
        status=2,
    ),
    # ---------------------------------------------------------------- elmo convert
    Case("convert-missing-src", ["convert", "nowhere", "-o", "out"], "nowhere"),
    Case("convert-text-src", ["convert", "in.txt", "-o", "out"], "in.txt", _in_txt),
    Case("convert-empty-dir", ["convert", "src", "-o", "out"], "src", lambda t: (t / "src").mkdir()),
    Case(
        "convert-state-binary",
        ["convert", "src", "-o", "out"],
        "src/checkpoint",
        _raw("src/checkpoint", b"\xff\xfe\x00\x81"),
    ),
    Case(
        "convert-state-dev-zero",
        ["convert", "src", "-o", "out"],
        "src/checkpoint: is a character device",
        _all(lambda t: (t / "src").mkdir(), _link("src/checkpoint", "/dev/zero")),
    ),
    Case(
        "convert-state-no-path",
        ["convert", "src", "-o", "out"],
        "src/checkpoint: no model_checkpoint_path",
        _raw("src/checkpoint", "nothing here\n"),
    ),
    Case(
        "convert-inline-options-bad",
        ["convert", "src", "-o", "out", "--options", "{bad"],
        "--options: not valid JSON",
        lambda t: (t / "src").mkdir(),
    ),
    Case(
        "convert-inline-options-deep",
        ["convert", "src", "-o", "out", "--options", '{"a":' * 50_000 + "1" + "}" * 50_000],
        "--options: JSON nested too deeply",
        lambda t: (t / "src").mkdir(),
    ),
    Case(
        "convert-options-dev-zero",
        ["convert", "src", "-o", "out", "--options", "/dev/zero", "--activation", "tanh"],
        "/dev/zero: is a character device",
        lambda t: (t / "src").mkdir(),
    ),
    Case(
        "convert-options-list",
        ["convert", "src", "-o", "out", "--options", "o.json", "--activation", "tanh"],
        "o.json: expected a JSON object",
        _all(lambda t: (t / "src").mkdir(), _raw("o.json", "[1]")),
    ),
    Case(
        "convert-cell-clip-nan",
        ["convert", "src", "-o", "out", "--cell-clip", "nan"],
        "--cell-clip: expected a finite positive number",
        lambda t: (t / "src").mkdir(),
        status=2,
    ),
    Case(
        "convert-max-chars-huge",
        ["convert", "src", "-o", "out", "--max-characters-per-token", "1000000000"],
        "--max-characters-per-token: expected an integer",
        lambda t: (t / "src").mkdir(),
        status=2,
    ),
    # ---------------------------------------------------------------- elmo perplexity
    Case(
        "perplexity-batch-0",
        ["perplexity", "m", "--data", "in.txt", "--batch-size", "0"],
        "--batch-size: expected a positive integer",
        _all(_model_dir, _in_txt),
        status=2,
    ),
    Case(
        "perplexity-no-head",
        ["perplexity", "m", "--data", "in.txt", "-q"],
        "m: holds only the embedder",
        _all(_model_dir, _in_txt),
    ),
    Case(
        "perplexity-data-missing",
        ["perplexity", "m", "--data", "nothing*.txt", "-q"],
        "nothing*.txt: matches no file",
        _model_dir,
    ),
    Case(
        "perplexity-data-dev-zero",
        ["perplexity", "m", "--data", "/dev/zero", "-q"],
        "/dev/zero: matches no regular file",
        _model_dir,
    ),
    Case(
        "perplexity-vocab-dev-zero",
        ["perplexity", "m", "--data", "in.txt", "--vocab", "/dev/zero", "-q"],
        "/dev/zero: is a character device",
        _all(_model_dir, _in_txt),
    ),
    Case(
        "perplexity-vocab-missing",
        ["perplexity", "m", "--data", "in.txt", "--vocab", "v.txt", "-q"],
        "v.txt: vocabulary not found",
        _all(_model_dir, _in_txt),
    ),
    Case(
        "perplexity-vocab-size",
        ["perplexity", "lm", "--data", "in.txt", "--vocab", "v.txt", "-q"],
        "v.txt: the vocabulary has 4 words but the softmax of lm has 5 rows",
        _all(_lm_dir(), _raw("v.txt", "<S>\n</S>\n<UNK>\na\n")),
    ),
    Case(
        "perplexity-data-binary",
        ["perplexity", "lm", "--data", "bin.txt", "-q"],
        "bin.txt, line 1: not UTF-8",
        _all(_lm_dir(), _raw("bin.txt", b"\xff\xfe\n")),
    ),
    Case(
        "perplexity-head-nan",
        ["perplexity", "lm", "--data", "in.txt", "-q"],
        "lm_head.hdf5: softmax/W or softmax/b contains NaN",
        _lm_dir(_nan_head),
    ),
    Case(
        "perplexity-head-text",
        ["perplexity", "lm", "--data", "in.txt", "-q"],
        "lm_head.hdf5: not a readable LM head",
        _lm_dir(_text_head),
    ),
    Case(
        "perplexity-head-not-hdf5",
        ["perplexity", "lm", "--data", "in.txt", "-q"],
        "lm_head.hdf5: not a readable LM head",
        _all(_lm_dir(), _raw("lm/lm_head.hdf5", "junk")),
    ),
    Case(
        "perplexity-vocab-beside-dev-zero",
        ["perplexity", "lm", "--data", "in.txt", "-q"],
        "lm/vocab.txt: is a character device",
        _all(_lm_dir(), lambda t: (t / "lm" / "vocab.txt").unlink(), _link("lm/vocab.txt", "/dev/zero")),
    ),
    Case(
        "perplexity-device-bogus",
        ["perplexity", "lm", "--data", "in.txt", "--device", "bogus", "-q"],
        "--device: expected a torch device",
        _lm_dir(),
        status=2,
    ),
    Case("perplexity-model-missing", ["perplexity", "nowhere", "--data", "in.txt", "-q"], "nowhere", _in_txt),
    # ---------------------------------------------------------------- elmo vocab
    Case("vocab-corpus-missing", ["vocab", "none*.txt", "-o", "v.txt"], "none*.txt: matches no file"),
    Case("vocab-corpus-empty", ["vocab", "in.txt", "-o", "v.txt"], "in.txt: no tokens", _raw("in.txt", "")),
    Case(
        "vocab-corpus-binary",
        ["vocab", "in.txt", "-o", "v.txt"],
        "in.txt",
        _raw("in.txt", b"ok\n\xff\xfe bad\n"),
    ),
    Case(
        "vocab-corpus-dir",
        ["vocab", "d", "-o", "v.txt"],
        "d: matches only directories",
        lambda t: (t / "d").mkdir(),
    ),
    Case(
        "vocab-min-count-0",
        ["vocab", "in.txt", "-o", "v.txt", "--min-count", "0"],
        "--min-count: expected an integer >= 1",
        _in_txt,
        status=2,
    ),
    Case(
        "vocab-max-size-2",
        ["vocab", "in.txt", "-o", "v.txt", "--max-size", "2"],
        "--max-size: expected an integer >= 3",
        _in_txt,
        status=2,
    ),
    Case("vocab-output-missing-dir", ["vocab", "in.txt", "-o", "no/v.txt"], "no/v.txt", _in_txt),
    Case("vocab-output-dir", ["vocab", "in.txt", "-o", "d"], "d", _all(_in_txt, lambda t: (t / "d").mkdir())),
    # ---------------------------------------------------------------- elmo vocab-embeddings
    Case("vocab-emb-missing", ["vocab-embeddings", "v.txt", "-o", "out.hdf5"], "v.txt: vocabulary not found"),
    Case(
        "vocab-emb-dev-zero",
        ["vocab-embeddings", "/dev/zero", "-o", "out.hdf5", "-q"],
        "/dev/zero: is a character device",
        subprocess=True,
    ),
    Case(
        "vocab-emb-fifo",
        ["vocab-embeddings", "v.txt", "-o", "out.hdf5", "-q"],
        "v.txt: is a FIFO",
        _fifo("v.txt"),
    ),
    Case(
        "vocab-emb-dir",
        ["vocab-embeddings", "d", "-o", "out.hdf5", "-q"],
        "d: is a directory",
        lambda t: (t / "d").mkdir(),
    ),
    Case(
        "vocab-emb-empty",
        ["vocab-embeddings", "v.txt", "-o", "out.hdf5", "-q"],
        "v.txt: the vocabulary holds no tokens",
        _raw("v.txt", ""),
    ),
    Case(
        "vocab-emb-binary",
        ["vocab-embeddings", "v.txt", "-o", "out.hdf5", "-q"],
        "v.txt, line 1: not UTF-8",
        _raw("v.txt", b"\xff\xfe\n"),
    ),
    Case(
        "vocab-emb-batch-0",
        ["vocab-embeddings", "vocab.txt", "-o", "out.hdf5", "--batch-size", "0"],
        "--batch-size: expected a positive integer",
        _vocab,
        status=2,
    ),
    Case(
        "vocab-emb-device-bogus",
        ["vocab-embeddings", "vocab.txt", "-o", "out.hdf5", "--device", "gpu"],
        "--device: expected a torch device",
        _vocab,
        status=2,
    ),
    Case(
        "vocab-emb-output-exists",
        ["vocab-embeddings", "vocab.txt", "-o", "vocab.txt"],
        "vocab.txt: already exists",
        _vocab,
    ),
    Case(
        "vocab-emb-output-missing-dir",
        ["vocab-embeddings", "vocab.txt", "-o", "no/out.hdf5", "-q"],
        "no/out.hdf5",
        _vocab,
    ),
    Case(
        "vocab-emb-bad-options",
        ["vocab-embeddings", "vocab.txt", "-o", "out.hdf5", *WITH_OPTS, "-q"],
        "opts.json: lstm.cell_clip",
        _all(_vocab, _options(lstm__cell_clip="NaN")),
    ),
    # ---------------------------------------------------------------- elmo models / download / export / train
    Case("models-cache-is-file", ["models", "--cache-dir", "in.txt"], "", _in_txt, status=0),
    Case("download-unknown", ["download", "no-such-model", "--cache-dir", "cache"], "no-such-model"),
    Case("export-missing", ["export", "nowhere", "-o", "out"], "nowhere"),
    Case(
        "train-options-dev-zero",
        [
            "train",
            "--options",
            "/dev/zero",
            "--vocab",
            "vocab.txt",
            "--train",
            "in.txt",
            "--out",
            "run",
            "-q",
        ],
        "/dev/zero: is a character device",
        _all(_vocab, _in_txt),
    ),
    Case(
        "train-options-dim-1e7",
        [
            "train",
            "--options",
            "opts.json",
            "--vocab",
            "vocab.txt",
            "--train",
            "in.txt",
            "--out",
            "run",
            "-q",
        ],
        "opts.json: lstm.dim: expected an integer <= 65536",
        _all(_vocab, _in_txt, _options(lstm__dim=10**7)),
    ),
    Case(
        "train-vocab-dev-zero",
        [
            "train",
            "--options",
            "opts.json",
            "--vocab",
            "/dev/zero",
            "--train",
            "in.txt",
            "--out",
            "run",
            "-q",
        ],
        "/dev/zero: is a character device",
        _all(_in_txt, _options()),
    ),
    # ---------------------------------------------------------------- argparse
    Case("no-command", [], "the following arguments are required: COMMAND", status=2),
    Case("unknown-command", ["frobnicate"], "invalid choice: 'frobnicate'", status=2),
]


def _touch(path: Path) -> Path:
    path.touch()
    return path


def _check(case: Case, status: int | None, err: str) -> None:
    assert status == case.status, f"exit status {status}, expected {case.status}: {err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    if case.status == 0:
        return
    if case.status == 2 and lines and lines[0].startswith("usage:"):
        lines = lines[1:]  # argparse's usage line, then its one error line
        while lines and lines[0].startswith(" "):  # a usage line wrapped by argparse
            lines = lines[1:]
    assert len(lines) == 1, f"expected one line, found {len(lines)}:\n{err}"
    line = lines[0]
    assert " error: " in line, line
    assert case.expect in line, f"{case.expect!r} not in {line!r}"
    assert "unexpected internal error" not in line, line  # elmo.cli's last resort
    for raw in ("KeyError", "AttributeError", "ZeroDivisionError", "RecursionError", "MemoryError", "Error:"):
        assert raw not in line, line


def _setup(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.needs_user and os.geteuid() == 0:
        pytest.skip("runs as root, which reads a file whatever its mode")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ELMO_DEBUG", raising=False)
    monkeypatch.setenv("ELMO_CACHE", str(tmp_path / "cache"))
    if case.setup is not None:
        case.setup(tmp_path)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line(case, tmp_path, monkeypatch, capsys):
    _setup(case, tmp_path, monkeypatch)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        status: int | None = main(case.argv)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    finally:
        signal.signal(signal.SIGTERM, handler)
    _check(case, status, capsys.readouterr().err)
    if case.id.startswith(("embed-", "vocab-emb-")):
        assert not (tmp_path / "out.hdf5").exists()


SUBPROCESS_CASES = [c for c in CASES if c.subprocess]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_bad_input_is_one_line_from_the_real_command(case, tmp_path, monkeypatch):
    _setup(case, tmp_path, monkeypatch)
    r = subprocess.run(
        [sys.executable, "-m", "elmo", *case.argv],
        capture_output=True,
        timeout=120,
        env=dict(os.environ, PYTHONWARNINGS="default"),
    )
    _check(case, r.returncode, r.stderr.decode(errors="replace"))
