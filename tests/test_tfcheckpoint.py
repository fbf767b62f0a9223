"""Reading TensorFlow V2 checkpoints without TensorFlow (elmo.tfcheckpoint)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import BILMTF, needs_shared, tiny_model
from elmo.errors import ElmoError, TFCheckpointError
from elmo.tfcheckpoint import (
    CheckpointReader,
    crc32c,
    latest_checkpoint,
    list_variables,
    mask_crc32c,
    read_variables,
    snappy_decompress,
)
from tfckpt_writer import entry_proto, header_proto, snappy_compress, write_checkpoint, write_table

GENERATED = BILMTF / "generated"
needs_generated = needs_shared(GENERATED)
RUNS = {"run_small_sampled": 60, "run_small_fullsoftmax_nodropout": 30}


def _assert_same(got: dict[str, np.ndarray], want) -> None:
    assert sorted(got) == sorted(want.keys())
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        assert np.array_equal(got[name], want[name]), name


# --------------------------------------------------------------------------- fixtures


@needs_generated
@pytest.mark.parametrize("run", sorted(RUNS))
@pytest.mark.parametrize(
    ("ckpt", "npz"),
    [
        (None, "ckpt_all_variables.npz"),
        ("model_init.ckpt", "ckpt_init_variables.npz"),
        ("model_step1.ckpt", "ckpt_step1_variables.npz"),
    ],
    ids=["latest", "init", "step1"],
)
def test_bilm_tf_checkpoints_match_numpy_dumps(run, ckpt, npz):
    """Every variable, its dtype (global_step is float32) and its exact value."""
    folder = GENERATED / run / "checkpoint"
    prefix = folder / ckpt if ckpt else folder
    want = np.load(GENERATED / run / npz)
    got = read_variables(prefix)
    _assert_same(got, want)
    assert got["global_step"].dtype == np.float32 and got["global_step"].shape == ()


@needs_generated
@pytest.mark.parametrize("run", sorted(RUNS))
def test_list_variables_and_latest_checkpoint(run):
    folder = GENERATED / run / "checkpoint"
    prefix = latest_checkpoint(folder)
    assert prefix == folder / f"model.ckpt-{RUNS[run]}"
    shapes = json.loads((GENERATED / run / "ckpt_variable_shapes.json").read_text(encoding="utf-8"))
    listed = list_variables(prefix)
    assert {n: list(s) for n, (_, s) in listed.items()} == shapes
    assert all(dtype == np.float32 for dtype, _ in listed.values())
    assert float(read_variables(prefix, ["global_step"])["global_step"]) == RUNS[run]


@needs_generated
def test_latest_checkpoint_accepts_prefix_and_its_files():
    folder = GENERATED / "run_small_sampled" / "checkpoint"
    prefix = folder / "model.ckpt-60"
    for given in (prefix, f"{prefix}.index", f"{prefix}.meta", f"{prefix}.data-00000-of-00001"):
        assert latest_checkpoint(given) == prefix
    assert latest_checkpoint(folder / "model_init.ckpt") == folder / "model_init.ckpt"


@needs_shared(BILMTF / "model")
def test_released_model_fixture_has_no_tf_checkpoint():
    """bilm-tf/model holds only the dumped hdf5 weights: nothing to compare there."""
    with pytest.raises(TFCheckpointError, match="no TensorFlow checkpoint"):
        latest_checkpoint(BILMTF / "model")


# --------------------------------------------------------------------------- the state file


def _copy_run(tmp_path: Path, run: str = "run_small_sampled") -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(GENERATED / run / "checkpoint", dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


@needs_generated
def test_state_file_absolute_and_moved_paths(tmp_path):
    folder = _copy_run(tmp_path)
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{folder / "model_step1.ckpt"}"\n')
    assert latest_checkpoint(folder) == folder / "model_step1.ckpt"
    # Written on another machine: the absolute path is gone, the file name is here.
    (folder / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/run/model_init.ckpt"\n')
    assert latest_checkpoint(folder) == folder / "model_init.ckpt"
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-999"\n')
    with pytest.raises(TFCheckpointError, match=r"model\.ckpt-999"):
        latest_checkpoint(folder)
    (folder / "checkpoint").write_text("nothing useful\n")
    with pytest.raises(TFCheckpointError, match="model_checkpoint_path"):
        latest_checkpoint(folder)


@needs_generated
def test_directory_without_state_file(tmp_path):
    folder = _copy_run(tmp_path)
    (folder / "checkpoint").unlink()
    with pytest.raises(TFCheckpointError, match="several checkpoints"):
        latest_checkpoint(folder)
    for f in folder.glob("model_*"):
        f.unlink()
    assert latest_checkpoint(folder) == folder / "model.ckpt-60"
    with pytest.raises(TFCheckpointError, match="no such checkpoint"):
        latest_checkpoint(tmp_path / "absent" / "model.ckpt")


# --------------------------------------------------------------------------- checksums, snappy


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 test vectors
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(np.frombuffer(b"123456789", np.uint8)) == crc32c(bytearray(b"123456789"))
    assert mask_crc32c(0) == 0xA282EAD8


@pytest.mark.parametrize("n", [(1 << 16) - 1, 1 << 16, (1 << 16) + 4099, 5 * 4096 * 4 + 3])
def test_crc32c_fast_path_matches_byte_loop(n):
    """Large inputs take the lane-parallel numpy path; it must equal the plain loop."""
    from elmo import tfcheckpoint as tfc

    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    slow = tfc._crc_update(0xFFFFFFFF, data.tobytes()) ^ 0xFFFFFFFF
    assert crc32c(data) == slow
    assert crc32c(data.tobytes()) == slow


def test_snappy_round_trip_and_hand_made_block():
    data = b"abcabcabcabcabcabc" * 40 + bytes(range(256)) * 3 + b"x" * 500
    packed = snappy_compress(data)
    assert len(packed) < len(data)
    assert snappy_decompress(packed) == data
    # "abcd", then a 1-byte-offset copy of 8 bytes at distance 4 (overlapping its output).
    hand = bytes([12, 3 << 2]) + b"abcd" + bytes([(8 - 4) << 2 | 1, 4])
    assert snappy_decompress(hand) == b"abcdabcdabcd"
    with pytest.raises(TFCheckpointError, match="bad copy"):
        snappy_decompress(bytes([8, 0]) + b"a" + bytes([(8 - 4) << 2 | 1, 9]))
    with pytest.raises(TFCheckpointError, match="header says"):
        snappy_decompress(bytes([5, 0]) + b"a")


# --------------------------------------------------------------------------- writer round trip


def _variety() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    out = {
        f"scope/layer_{i:02d}/kernel": rng.standard_normal((i % 3 + 1, 5)).astype(np.float32)
        for i in range(40)
    }
    out.update(
        {
            "global_step": np.float32(12),
            "counts": np.arange(-4, 4, dtype=np.int64),
            "ids": np.arange(6, dtype=np.int32).reshape(2, 3),
            "doubles": rng.standard_normal(7),
            "empty": np.zeros((0, 3), np.float32),
            "flags": np.array([True, False, True]),
            "halves": np.array([1.5, -2.0], np.float16),
        }
    )
    return out


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"num_shards": 3}, {"compression": "snappy"}, {"big_endian": True}],
    ids=["plain", "sharded", "snappy", "big-endian"],
)
def test_writer_reader_round_trip(tmp_path, kwargs):
    values = _variety()
    prefix = write_checkpoint(tmp_path / "model.ckpt", values, **kwargs)
    reader = CheckpointReader(prefix)
    assert reader.header.num_shards == kwargs.get("num_shards", 1)
    assert len(reader) == len(values) and "counts" in reader
    got = reader.read_many()
    for name, want in values.items():
        want = np.asarray(want)
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert np.array_equal(got[name], want), name
        assert got[name].flags.writeable
    assert reader.variables()["ids"] == (np.dtype(np.int32), (2, 3))
    assert np.array_equal(reader.read("counts"), values["counts"])


def test_bfloat16_is_read_as_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    prefix = tmp_path / "bf"
    entry = entry_proto(14, (3,), 0, 0, len(raw), crc32c(raw))
    write_table(prefix.with_name("bf.index"), [(b"", header_proto(1)), (b"w", entry)])
    prefix.with_name("bf.data-00000-of-00001").write_bytes(raw)
    got = read_variables(prefix)["w"]
    assert got.dtype == np.float32 and np.array_equal(got, values)
    assert list_variables(prefix)["w"][0] == np.float32


# --------------------------------------------------------------------------- errors


@pytest.fixture
def small_ckpt(tmp_path) -> Path:
    return write_checkpoint(tmp_path / "model.ckpt", _variety())


def test_error_is_an_elmo_error():
    assert issubclass(TFCheckpointError, ElmoError) and issubclass(TFCheckpointError, ValueError)


@needs_generated
def test_truncated_index(tmp_path):
    folder = _copy_run(tmp_path)
    index = folder / "model.ckpt-60.index"
    data = index.read_bytes()
    index.write_bytes(data[: len(data) // 2])
    with pytest.raises(TFCheckpointError, match=r"model\.ckpt-60\.index: .*(magic|truncated)"):
        read_variables(folder)
    index.write_bytes(data[:20])
    with pytest.raises(TFCheckpointError, match="too short"):
        list_variables(folder)


def test_corrupt_index_block(small_ckpt):
    index = small_ckpt.with_name("model.ckpt.index")
    data = bytearray(index.read_bytes())
    data[10] ^= 0x40
    index.write_bytes(bytes(data))
    with pytest.raises(TFCheckpointError, match="checksum mismatch"):
        CheckpointReader(small_ckpt)


@needs_generated
def test_corrupted_data_byte_fails_the_checksum(tmp_path):
    folder = _copy_run(tmp_path)
    prefix = folder / "model.ckpt-60"
    entry = CheckpointReader(prefix).entry("lm/CNN/W_cnn_2")
    data_file = prefix.with_name("model.ckpt-60.data-00000-of-00001")
    data = bytearray(data_file.read_bytes())
    data[entry.offset + 5] ^= 0x01
    data_file.write_bytes(bytes(data))
    with pytest.raises(TFCheckpointError, match=r"data-00000-of-00001: variable 'lm/CNN/W_cnn_2': checksum"):
        read_variables(prefix)
    # Other variables are intact, and verification can be turned off.
    assert read_variables(prefix, ["lm/CNN/W_cnn_1"])["lm/CNN/W_cnn_1"].shape == (1, 2, 4, 8)
    assert read_variables(prefix, ["lm/CNN/W_cnn_2"], verify=False)["lm/CNN/W_cnn_2"].shape == (1, 3, 4, 16)


def test_truncated_data_file(small_ckpt):
    data_file = small_ckpt.with_name("model.ckpt.data-00000-of-00001")
    data_file.write_bytes(data_file.read_bytes()[:100])
    with pytest.raises(TFCheckpointError, match=r"has 100 \(truncated\?\)"):
        read_variables(small_ckpt)


def test_missing_data_shard(tmp_path):
    prefix = write_checkpoint(tmp_path / "model.ckpt", _variety(), num_shards=2)
    prefix.with_name("model.ckpt.data-00001-of-00002").unlink()
    reader = CheckpointReader(prefix)  # the index alone is fine
    with pytest.raises(TFCheckpointError, match=r"data-00001-of-00002: checkpoint data file not found"):
        reader.read_many()


def test_not_a_checkpoint(tmp_path):
    fake = tmp_path / "weights"
    fake.with_name("weights.index").write_bytes(b"this is not a table" * 10)
    with pytest.raises(TFCheckpointError, match="bad table magic"):
        read_variables(fake)
    with pytest.raises(TFCheckpointError, match="does not exist"):
        read_variables(tiny_model() / "weights.hdf5")


def test_unknown_variable_lists_close_names(small_ckpt):
    with pytest.raises(
        TFCheckpointError, match=r"no variable 'scope/layer_01/kernal'.*close names: scope/layer_01/kernel"
    ):
        read_variables(small_ckpt, ["scope/layer_01/kernal"])


def test_unsupported_dtype(tmp_path):
    prefix = tmp_path / "s"
    items = [(b"", header_proto(1)), (b"text", entry_proto(7, (1,), 0, 0, 6, 0))]
    write_table(prefix.with_name("s.index"), items)
    prefix.with_name("s.data-00000-of-00001").write_bytes(b"\x05hello")
    assert list_variables(prefix)["text"] == (np.dtype(object), (1,))
    with pytest.raises(TFCheckpointError, match="'text': dtype DT_STRING is not supported"):
        read_variables(prefix)
