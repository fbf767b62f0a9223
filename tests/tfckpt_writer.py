"""A small TensorFlow V2 checkpoint writer for tests (no TensorFlow needed).

Writes ``PREFIX.index`` (a LevelDB-format table: prefix-compressed keys with restart
points, an index block, a footer with the magic number; blocks uncompressed or snappy)
and ``PREFIX.data-SSSSS-of-NNNNN`` shards, with hand-encoded ``BundleHeaderProto`` and
``BundleEntryProto`` values and masked CRC-32C checksums, as TensorFlow's BundleWriter
does. It exists to test the reader and the converters, not to be a complete writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elmo.tfcheckpoint import TABLE_MAGIC, crc32c, mask_crc32c

# numpy dtype -> TensorFlow DataType enum
DTYPE_CODES = {
    np.dtype("float32"): 1,
    np.dtype("float64"): 2,
    np.dtype("int32"): 3,
    np.dtype("uint8"): 4,
    np.dtype("int16"): 5,
    np.dtype("int8"): 6,
    np.dtype("int64"): 9,
    np.dtype("bool"): 10,
    np.dtype("float16"): 19,
}


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return varint(number << 3 | wire) + payload


def field_varint(number: int, value: int) -> bytes:
    return _field(number, 0, varint(value))


def field_bytes(number: int, value: bytes) -> bytes:
    return _field(number, 2, varint(len(value)) + value)


def field_fixed32(number: int, value: int) -> bytes:
    return _field(number, 5, value.to_bytes(4, "little"))


def header_proto(num_shards: int, big_endian: bool = False) -> bytes:
    out = field_varint(1, num_shards)
    if big_endian:
        out += field_varint(2, 1)
    return out + field_bytes(3, field_varint(1, 1))  # version {producer: 1}


def entry_proto(
    dtype_code: int, shape: tuple[int, ...], shard: int, offset: int, size: int, crc: int
) -> bytes:
    shape_proto = b"".join(field_bytes(2, field_varint(1, d)) for d in shape)
    out = field_varint(1, dtype_code) + field_bytes(2, shape_proto)
    if shard:
        out += field_varint(3, shard)
    if offset:
        out += field_varint(4, offset)
    if size:
        out += field_varint(5, size)
    return out + field_fixed32(6, mask_crc32c(crc))


def snappy_compress(data: bytes) -> bytes:
    """A valid (not optimal) snappy block: literals, and 2-byte-offset copies of repeats."""
    out = bytearray(varint(len(data)))
    last: dict[bytes, int] = {}
    pos = literal_start = 0

    def literal(end: int) -> None:
        chunk = data[literal_start:end]
        while chunk:
            piece, chunk = chunk[:60], chunk[60:]
            out.append((len(piece) - 1) << 2)
            out.extend(piece)

    while pos + 4 <= len(data):
        key = data[pos : pos + 4]
        cand = last.get(key)
        last[key] = pos
        if cand is None or pos - cand > 0xFFFF:
            pos += 1
            continue
        length = 4
        while pos + length < len(data) and length < 64 and data[cand + length] == data[pos + length]:
            length += 1
        literal(pos)
        out.append((length - 1) << 2 | 2)
        out.extend((pos - cand).to_bytes(2, "little"))
        pos += length
        literal_start = pos
    literal(len(data))
    return bytes(out)


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, prev = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value))
        out += key[shared:] + value
        prev = key
    restarts = restarts or [0]
    for r in restarts:
        out += r.to_bytes(4, "little")
    return bytes(out + len(restarts).to_bytes(4, "little"))


def _emit(f: bytearray, contents: bytes, compression: str) -> bytes:
    """Append a block with its trailer; returns its encoded handle."""
    kind = 0
    if compression == "snappy":
        contents, kind = snappy_compress(contents), 1
    offset = len(f)
    f += contents + bytes([kind])
    f += mask_crc32c(crc32c(contents + bytes([kind]))).to_bytes(4, "little")
    return varint(offset) + varint(len(contents))


def write_table(
    path: Path,
    items: list[tuple[bytes, bytes]],
    block_size: int = 256,
    restart_interval: int = 4,
    compression: str = "none",
) -> None:
    """A LevelDB-format table of ``items`` (sorted by key); small blocks to exercise the index."""
    items = sorted(items)
    f = bytearray()
    index: list[tuple[bytes, bytes]] = []
    pending: list[tuple[bytes, bytes]] = []
    for item in items:
        pending.append(item)
        if sum(len(k) + len(v) for k, v in pending) >= block_size:
            index.append((pending[-1][0], _emit(f, _block(pending, restart_interval), compression)))
            pending = []
    if pending or not index:
        index.append(
            (pending[-1][0] if pending else b"", _emit(f, _block(pending, restart_interval), compression))
        )
    meta = _emit(f, _block([], restart_interval), "none")
    index_handle = _emit(f, _block(index, 1), "none")
    footer = (meta + index_handle).ljust(40, b"\0") + TABLE_MAGIC.to_bytes(8, "little")
    path.write_bytes(bytes(f + footer))


def write_checkpoint(
    prefix: str | Path,
    variables: dict[str, np.ndarray],
    num_shards: int = 1,
    compression: str = "none",
    big_endian: bool = False,
) -> Path:
    """Write ``variables`` as a TF V2 checkpoint at ``prefix``; shards are filled round-robin."""
    prefix = Path(prefix)
    shards = [bytearray() for _ in range(num_shards)]
    items = [(b"", header_proto(num_shards, big_endian))]
    for i, name in enumerate(sorted(variables)):
        value = np.asarray(variables[name])
        code = DTYPE_CODES[value.dtype]
        order = ">" if big_endian else "<"
        raw = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder(order)).tobytes()
        shard = i % num_shards
        offset = len(shards[shard])
        shards[shard] += raw
        items.append((name.encode(), entry_proto(code, value.shape, shard, offset, len(raw), crc32c(raw))))
    write_table(prefix.with_name(prefix.name + ".index"), items, compression=compression)
    for s, data in enumerate(shards):
        prefix.with_name(f"{prefix.name}.data-{s:05d}-of-{num_shards:05d}").write_bytes(bytes(data))
    return prefix


def write_state_file(directory: Path, checkpoint_path: str) -> None:
    """The text ``checkpoint`` file that names the latest checkpoint."""
    text = f'model_checkpoint_path: "{checkpoint_path}"\nall_model_checkpoint_paths: "{checkpoint_path}"\n'
    (directory / "checkpoint").write_text(text, encoding="utf-8")
