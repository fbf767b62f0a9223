"""``elmo.atomic``: files and directories appear whole or not at all."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import h5py
import numpy as np
import pytest

from elmo.atomic import (
    atomic_dir,
    atomic_path,
    atomic_write,
    check_destination,
    publish,
    write_json_atomic,
    write_text_atomic,
)


class _Boom(Exception):
    pass


def _plain_mode(tmp_path: Path, directory: bool = False) -> int:
    """The permission bits a plain open() / mkdir() gives here (they depend on the umask)."""
    probe = tmp_path / "probe"
    probe.mkdir() if directory else probe.touch()
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.rmdir() if directory else probe.unlink()
    return mode


def test_the_file_appears_whole_only_when_the_block_ends(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new ")
        f.flush()
        assert path.read_bytes() == b"old"  # readers still see the old content
        f.write(b"content")
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_an_error_removes_the_temporary_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    with pytest.raises(_Boom), atomic_write(path, "w", encoding="utf-8") as f:
        f.write("half")
        raise _Boom
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]

    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_no_file_is_made_when_the_first_write_fails(tmp_path):
    path = tmp_path / "new.txt"
    with pytest.raises(_Boom), atomic_write(path, "w", encoding="utf-8"):
        raise _Boom
    assert list(tmp_path.iterdir()) == []


def test_two_writers_in_one_directory_do_not_collide(tmp_path):
    path = tmp_path / "out.json"
    with atomic_path(path) as first, atomic_path(path) as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name.startswith(".out.json.") and first.name.endswith(".tmp")
        first.write_text("1")
        second.write_text("2")
    # The block ends the inner writer first: the outer one's file is the last published.
    assert path.read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_h5py_writes_through_a_path(tmp_path):
    path = tmp_path / "weights.hdf5"
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    with atomic_path(path) as tmp, h5py.File(tmp, "x") as h5:
        h5.create_dataset("w", data=data)
    with h5py.File(path, "r") as h5:
        np.testing.assert_array_equal(h5["w"][()], data)

    with pytest.raises(_Boom), atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("other", data=data)
        raise _Boom
    with h5py.File(path, "r") as h5:
        assert list(h5) == ["w"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.hdf5"]


def test_text_and_json_helpers(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "x\ny\n")
    assert (tmp_path / "a.txt").read_bytes() == b"x\ny\n"
    write_json_atomic(tmp_path / "a.json", {"k": [1, 2]}, indent=2)
    assert (tmp_path / "a.json").read_text() == json.dumps({"k": [1, 2]}, indent=2) + "\n"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == _plain_mode(tmp_path)


def test_atomic_write_refuses_modes_other_than_writing(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", "ab"):
        pass


def test_publish_renames_a_finished_file(tmp_path):
    src, dest = tmp_path / "f.partial", tmp_path / "f"
    src.write_bytes(b"whole")
    dest.write_bytes(b"old")
    publish(src, dest)
    assert dest.read_bytes() == b"whole" and not src.exists()


def test_directory_replaces_an_existing_one_whole(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("stale")
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.is_dir() and tmp != out
        (tmp / "options.json").write_text("{}")
        assert (out / "stale.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["options.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert stat.S_IMODE(out.stat().st_mode) == _plain_mode(tmp_path, directory=True)


def test_directory_error_leaves_the_old_one(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights.hdf5").write_text("old")
    with pytest.raises(_Boom), atomic_dir(out) as tmp:
        (tmp / "weights.hdf5").write_text("half")
        raise _Boom
    assert (out / "weights.hdf5").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_directory_over_an_empty_one_and_a_new_one(tmp_path):
    (tmp_path / "empty").mkdir()
    for name in ("empty", "new"):
        with atomic_dir(tmp_path / name) as tmp:
            (tmp / "f").write_text(name)
        assert (tmp_path / name / "f").read_text() == name
    assert sorted(os.listdir(tmp_path)) == ["empty", "new"]


def test_a_missing_folder_or_a_directory_is_named_not_the_temporary(tmp_path):
    target = tmp_path / "no" / "out.txt"
    with pytest.raises(FileNotFoundError, match=r"out\.txt: the folder .*no does not exist$"):
        write_text_atomic(target, "x")
    with pytest.raises(IsADirectoryError, match=r": is a directory; expected a file name"):
        check_destination(tmp_path)
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(NotADirectoryError, match=r"file/out\.txt: .*file is not a folder"),
        atomic_write(tmp_path / "file" / "out.txt"),
    ):
        pass
    check_destination(tmp_path / "fine.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no temporary left anywhere
