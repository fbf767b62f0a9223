"""Reading small files whole under a size cap: missing, too large, not regular, growing."""

from __future__ import annotations

import os
import threading

import pytest

from elmo.errors import ConfigError
from elmo.files import check_regular_file, parse_json, read_bytes_capped, read_json_capped, read_text_capped


def test_reads_a_regular_file_and_drops_a_bom(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert read_text_capped(path, 100, "options file") == '{"a": 1}'
    assert read_json_capped(path, 100, "options file") == {"a": 1}
    assert read_bytes_capped(path, 11, "x") == b'\xef\xbb\xbf{"a": 1}'


def test_a_file_over_the_cap_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.truncate(10 * 2**30)  # a sparse 10 GiB file: refused from its size, nothing read
    with pytest.raises(ConfigError, match=r"big\.json: options file of 10240 MiB, larger than the 1 MiB"):
        read_text_capped(path, 2**20, "options file", ConfigError)


def test_dev_zero_and_directories_and_fifos_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"/dev/zero: is a character device; expected the options file"):
        read_bytes_capped("/dev/zero", 2**20, "options file", ConfigError)
    with pytest.raises(ConfigError, match=r": is a directory; expected the vocabulary"):
        read_bytes_capped(tmp_path, 2**20, "vocabulary", ConfigError)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # No writer ever opens the FIFO: reading it would hang; it is refused at once.
    result: list[BaseException] = []

    def attempt() -> None:
        try:
            read_bytes_capped(fifo, 2**20, "options file", ConfigError)
        except ConfigError as e:
            result.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(30)
    assert result and "is a FIFO (named pipe)" in str(result[0])
    with pytest.raises(ConfigError, match="is a FIFO"):
        check_regular_file(fifo, "weight file", ConfigError)


def test_missing_looping_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.json: options file not found"):
        read_bytes_capped(tmp_path / "nope.json", 10, "options file", ConfigError)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ConfigError, match=r"loop: cannot open the options file: Too many levels"):
        read_bytes_capped(loop, 10, "options file", ConfigError)
    if os.geteuid() == 0:
        return  # root reads files whatever their mode
    locked = tmp_path / "locked.json"
    locked.write_text("{}")
    locked.chmod(0)
    with pytest.raises(ConfigError, match=r"locked\.json: cannot open the options file: Permission denied"):
        read_bytes_capped(locked, 10, "options file", ConfigError)


def test_json_failures_are_one_error_naming_the_source():
    with pytest.raises(ConfigError, match=r"^o\.json: JSON nested too deeply$"):
        parse_json("[" * 100_000 + "]" * 100_000, "o.json", ConfigError)
    with pytest.raises(ConfigError, match=r"^o\.json: not valid JSON: .*4300"):
        parse_json("1" * 5000, "o.json", ConfigError)
    with pytest.raises(ConfigError, match=r"^o\.json: not valid JSON: Expecting value at line 1, column 1$"):
        parse_json("", "o.json", ConfigError)
