"""Training checkpoints: content checksum, damaged and foreign files, a full disk."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from conftest import full_disk
from elmo import atomic
from elmo.errors import CheckpointError
from elmo.train.checkpoint import (
    FORMAT,
    Checkpoint,
    load_checkpoint,
    options_digest,
    save_checkpoint,
    vocab_digest,
)

OPTIONS = {"lstm": {"dim": 8, "cell_clip": 3.0}, "batch_size": 2, "learning_rate": 0.2}


def _checkpoint() -> Checkpoint:
    g = torch.Generator().manual_seed(0)
    return Checkpoint(
        step=7,
        options=OPTIONS,
        vocab_size=5,
        model={"encoder.w": torch.randn(64, 32, generator=g), "softmax.b": torch.randn(5, generator=g)},
        optimizer={"encoder.w": torch.rand(64, 32, generator=g) + 1},
        lstm_state=[torch.randn(2, 8, generator=g) for _ in range(4)],
        data_state={"position": [1, 2, 3]},
        rng={"torch_0": torch.get_rng_state()},
        meta={"world_size": 1, "elapsed_s": 1.5},
        vocab_sha256=vocab_digest(["<S>", "</S>", "<UNK>", "the", "cat"]),
    )


def _same(a: Checkpoint, b: Checkpoint) -> bool:
    return (
        a.step == b.step
        and a.options == b.options
        and a.meta == b.meta
        and a.data_state == b.data_state
        and a.vocab_sha256 == b.vocab_sha256
        and all(torch.equal(a.model[k], b.model[k]) for k in a.model)
        and all(torch.equal(a.optimizer[k], b.optimizer[k]) for k in a.optimizer)
        and all(torch.equal(x, y) for x, y in zip(a.lstm_state, b.lstm_state))
    )


def test_round_trip_records_the_digests(tmp_path):
    ckpt = _checkpoint()
    save_checkpoint(ckpt, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt")
    assert _same(ckpt, back)
    assert back.vocab_sha256 == vocab_digest(["<S>", "</S>", "<UNK>", "the", "cat"])
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    assert payload["options_sha256"] == options_digest(OPTIONS)
    assert len(payload["sha256"]) == 64
    # The digests depend on content, not on the order of keys.
    assert options_digest({"b": 1, "a": 2}) == options_digest({"a": 2, "b": 1})
    assert vocab_digest(["a", "b"]) != vocab_digest(["b", "a"])


def test_every_flipped_byte_is_refused_or_harmless(tmp_path):
    """A flipped bit anywhere either makes the file refused, naming it, or leaves what is
    read unchanged (zip fields nobody reads): never a checkpoint with other numbers."""
    ckpt = _checkpoint()
    good = tmp_path / "good.pt"
    save_checkpoint(ckpt, good)
    data = good.read_bytes()
    bad = tmp_path / "checkpoint.pt"
    refused = 0
    for position in range(0, len(data), max(1, len(data) // 300)):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        bad.write_bytes(bytes(damaged))
        try:
            back = load_checkpoint(bad)
        except CheckpointError as e:
            message = str(e)
            assert message.startswith(f"{bad}: ") and "\n" not in message, message
            refused += 1
        else:
            assert _same(ckpt, back), f"byte {position}: damaged content was accepted"
    assert refused > 200


def test_damaged_tensor_data_is_refused(tmp_path):
    ckpt = _checkpoint()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, path)
    data = bytearray(path.read_bytes())
    # The first tensor's bytes are in the file as they are: find and change one.
    raw = ckpt.model["encoder.w"].numpy().tobytes()
    at = bytes(data).index(raw[:64])
    data[at + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: the checkpoint is corrupt: SHA-256"):
        load_checkpoint(path)


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_checkpoint(), path)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"checkpoint.pt: not a readable training checkpoint"):
            load_checkpoint(path)
    path.write_bytes(b"\0" * 1000)
    with pytest.raises(CheckpointError, match="not a readable training checkpoint"):
        load_checkpoint(path)
    torch.save({"format": "other"}, path)
    with pytest.raises(CheckpointError, match="not an elmo training checkpoint"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/nonexistent-dir/evil"),))


def test_pickled_objects_are_refused_without_running(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": FORMAT, "version": 2, "model": _Evil()}, path)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: not a readable training checkpoint .*Unpickl"):
        load_checkpoint(path)


def test_version_1_files_without_digests_still_load(tmp_path, caplog):
    ckpt = _checkpoint()
    payload = {
        "format": FORMAT,
        "version": 1,
        "step": ckpt.step,
        "options": json.dumps(ckpt.options),
        "vocab_size": ckpt.vocab_size,
        "model": ckpt.model,
        "optimizer": ckpt.optimizer,
        "lstm_state": ckpt.lstm_state,
        "data_state": json.dumps(ckpt.data_state),
        "rng": ckpt.rng,
        "meta": json.dumps(ckpt.meta),
    }
    torch.save(payload, tmp_path / "old.pt")
    back = load_checkpoint(tmp_path / "old.pt")
    assert back.step == 7 and back.vocab_sha256 is None
    assert "carries no checksum" in caplog.text


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    first = _checkpoint()
    save_checkpoint(first, path)
    before = path.read_bytes()
    second = _checkpoint()
    second.step = 8
    full_disk(monkeypatch, atomic, 4096)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(second, path)
    assert str(info.value) == (
        f"{path}: cannot write the checkpoint ([Errno {errno.ENOSPC}] No space left on device); "
        "the previous checkpoint is left as it was"
    )
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left
    monkeypatch.undo()
    assert load_checkpoint(path).step == 7
