"""Reading TensorFlow V2 checkpoints ("tensor bundles") without TensorFlow.

A checkpoint ``PREFIX`` is ``PREFIX.index`` plus ``PREFIX.data-SSSSS-of-NNNNN`` shards.
The index is a LevelDB-format table (an SSTable) whose empty key holds a
``BundleHeaderProto`` and whose other keys are variable names, each with a
``BundleEntryProto`` that says where the tensor's raw bytes lie in which shard:

* table: data blocks of prefix-compressed ``key -> value`` entries with restart points,
  an index block of ``separator key -> block handle``, and a 48-byte footer (metaindex
  and index handles, zero padding, magic ``0xdb4775248b80fb57``). Each block is followed
  by a 1-byte compression type (0 none, 1 snappy) and the masked CRC-32C of block + type.
* ``BundleHeaderProto``: 1 num_shards, 2 endianness (0 little, 1 big), 3 version.
* ``BundleEntryProto``: 1 dtype, 2 shape (``TensorShapeProto``: 2 dim {1 size}),
  3 shard_id, 4 offset, 5 size, 6 crc32c (fixed32, masked), 7 slices.

The protobufs are decoded by hand and snappy blocks by a small pure-Python decoder, so
nothing beyond numpy is needed.

Checksums: every table block and, by default, every tensor is checked against its
CRC-32C. Large tensors are checksummed by a numpy implementation that runs many
independent CRCs side by side and combines them (about 1 s for the 360 MB of the
original ELMo), so verification stays on by default; ``verify=False`` skips it.

Not supported (clear errors): DT_STRING and other non-numeric tensors, partitioned
variables (saved as slices). bfloat16 tensors are returned as float32.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elmo.errors import TFCheckpointError
from elmo.files import OPTIONS_CAP, read_text_capped

__all__ = [
    "BundleHeader",
    "CheckpointReader",
    "TensorEntry",
    "crc32c",
    "latest_checkpoint",
    "list_variables",
    "mask_crc32c",
    "read_variables",
    "snappy_decompress",
]

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- CRC-32C

_CRC_POLY = 0x82F63B78  # Castagnoli, reflected


def _crc_tables() -> np.ndarray:
    """Slicing-by-4 tables: ``[0]`` is the byte table, ``[k]`` advances k more zero bytes."""
    t0 = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _CRC_POLY if c & 1 else c >> 1
        t0[i] = c
    tables = [t0]
    for _ in range(3):
        prev = tables[-1]
        tables.append((prev >> np.uint32(8)) ^ t0[prev & np.uint32(0xFF)])
    return np.stack(tables)


_TABLES = _crc_tables()
_TABLE = [int(v) for v in _TABLES[0]]
_MASK_DELTA = 0xA282EAD8
# Below this many bytes the plain loop is faster than setting up the vectorised one.
_FAST_CRC_MIN = 1 << 16
_LANE_BYTES = 4096


def _crc_update(state: int, data: bytes | bytearray | memoryview) -> int:
    """Advance a (pre-conditioned) CRC-32C state over ``data``, one byte at a time."""
    table = _TABLE
    for b in bytes(data):
        state = table[(state ^ b) & 0xFF] ^ (state >> 8)
    return state


def _advance_words(state: np.ndarray, words: np.ndarray) -> np.ndarray:
    """One slicing-by-4 step for many CRC states at once (``words``: 4 data bytes each)."""
    x = state ^ words
    t = _TABLES
    return t[3][x & 0xFF] ^ t[2][(x >> 8) & 0xFF] ^ t[1][(x >> 16) & 0xFF] ^ t[0][x >> 24]


def _shift_columns(n_bytes: int) -> np.ndarray:
    """The linear map "run n zero bytes through the CRC" as its 32 columns (one per bit)."""
    cols = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    zero = np.zeros(32, np.uint32)
    for _ in range(n_bytes // 4):
        cols = _advance_words(cols, zero)
    return cols


def _apply(cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros_like(values)
    for bit in range(32):
        out ^= np.where((values >> np.uint32(bit)) & np.uint32(1), cols[bit], np.uint32(0))
    return out


_LANE_SHIFT = _shift_columns(_LANE_BYTES)


def _crc_fast(data: np.ndarray) -> int:
    """CRC-32C state after ``data`` (uint8, >= one lane) computed lane-parallel in numpy.

    The data is cut into equal lanes whose CRCs (from a zero state) are computed side by
    side, then combined pairwise: crc(A + B) = shift_|B|(crc(A)) ^ crc(B), which holds
    because a zero-state CRC is linear. The usual all-ones start state equals inverting
    the first four data bytes, and leading zero lanes (added to reach a power of two)
    leave a zero-state CRC unchanged.
    """
    lanes = len(data) // _LANE_BYTES
    words = data[: lanes * _LANE_BYTES].view("<u4").reshape(lanes, _LANE_BYTES // 4)
    state = np.zeros(lanes, np.uint32)
    for j in range(words.shape[1]):
        column = words[:, j].astype(np.uint32)
        if j == 0:
            column[0] ^= np.uint32(0xFFFFFFFF)
        state = _advance_words(state, column)
    size = 1 << (lanes - 1).bit_length()
    state = np.concatenate([np.zeros(size - lanes, np.uint32), state])
    cols = _LANE_SHIFT
    while len(state) > 1:
        state = _apply(cols, state[0::2]) ^ state[1::2]
        cols = _apply(cols, cols)
    return _crc_update(int(state[0]), data[lanes * _LANE_BYTES :].tobytes())


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """The CRC-32C (Castagnoli) checksum of ``data``, as TensorFlow and LevelDB use it."""
    if isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(memoryview(data).cast("B"), np.uint8)
    state = _crc_update(0xFFFFFFFF, buf.tobytes()) if len(buf) < _FAST_CRC_MIN else _crc_fast(buf)
    return state ^ 0xFFFFFFFF


def mask_crc32c(crc: int) -> int:
    """LevelDB/TensorFlow's stored form of a CRC (rotated and offset, so that a CRC of
    data holding CRCs is not degenerate)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# --------------------------------------------------------------------------- snappy


def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; returns (value, next position)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError(f"{what}: truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise TFCheckpointError(f"{what}: malformed varint")


def snappy_decompress(data: bytes) -> bytes:
    """Decode a raw snappy block (the format LevelDB tables use for compressed blocks)."""
    what = "snappy block"
    expected, pos = _varint(data, 0, what)
    out = bytearray()
    n = len(data)
    while pos < n:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal; lengths over 60 follow the tag in 1-4 bytes
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                length = int.from_bytes(data[pos : pos + extra], "little")
                pos += extra
            length += 1
            if pos + length > n:
                raise TFCheckpointError(f"{what}: literal runs past the end of the data")
            out += data[pos : pos + length]
            pos += length
            continue
        if kind == 1:
            length = ((tag >> 2) & 7) + 4
            offset = ((tag >> 5) << 8) | (data[pos] if pos < n else 0)
            pos += 1
        else:
            width = 2 if kind == 2 else 4
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + width], "little")
            pos += width
        if pos > n or offset == 0 or offset > len(out):
            raise TFCheckpointError(f"{what}: bad copy (offset {offset}, {len(out)} bytes decoded)")
        start = len(out) - offset
        if offset >= length:
            out += out[start : start + length]
        else:  # the copy overlaps its own output: repeat the last `offset` bytes
            pattern = bytes(out[start:])
            out += (pattern * (length // offset + 1))[:length]
    if len(out) != expected:
        raise TFCheckpointError(f"{what}: decoded {len(out)} bytes, header says {expected}")
    return bytes(out)


# --------------------------------------------------------------------------- protobuf


def _fields(buf: bytes, what: str) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a serialized protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, what)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos, what)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, what)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise TFCheckpointError(f"{what}: unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise TFCheckpointError(f"{what}: truncated protobuf field {number}")
        yield number, wire, value


def _signed64(value: int) -> int:
    # int64 fields are varints of the two's-complement value (-1 is ten bytes).
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class BundleHeader:
    """The checkpoint's ``BundleHeaderProto``."""

    num_shards: int = 1
    big_endian: bool = False
    producer: int = 0


def _parse_header(value: bytes, what: str) -> BundleHeader:
    num_shards, big, producer = 1, False, 0
    for number, _, v in _fields(value, what):
        if number == 1:
            num_shards = int(v)
        elif number == 2:
            big = int(v) == 1
        elif number == 3 and isinstance(v, bytes):
            producer = next((int(p) for n, _, p in _fields(v, what) if n == 1), 0)
    return BundleHeader(num_shards=num_shards, big_endian=big, producer=producer)


# TensorFlow DataType enum -> numpy dtype (little-endian). 14 (bfloat16) is read into float32.
_DTYPES: dict[int, str] = {
    1: "<f4",
    2: "<f8",
    3: "<i4",
    4: "u1",
    5: "<i2",
    6: "i1",
    8: "<c8",
    9: "<i8",
    10: "?",
    14: "<u2",
    17: "<u2",
    18: "<c16",
    19: "<f2",
    22: "<u4",
    23: "<u8",
}
_DTYPE_NAMES = {
    7: "DT_STRING",
    11: "DT_QINT8",
    12: "DT_QUINT8",
    13: "DT_QINT32",
    20: "DT_RESOURCE",
    21: "DT_VARIANT",
}
_BFLOAT16 = 14


@dataclass(frozen=True)
class TensorEntry:
    """Where one variable's bytes are (a ``BundleEntryProto``)."""

    name: str
    dtype_code: int
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    masked_crc: int | None = None
    n_slices: int = 0

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype :meth:`CheckpointReader.read` returns (object for unsupported types)."""
        if self.dtype_code == _BFLOAT16:
            return np.dtype(np.float32)
        code = _DTYPES.get(self.dtype_code)
        return np.dtype(code) if code else np.dtype(object)


def _parse_shape(value: bytes, what: str) -> tuple[int, ...]:
    dims = []
    for number, _, v in _fields(value, what):
        if number == 2 and isinstance(v, bytes):
            size = next((_signed64(int(s)) for n, _, s in _fields(v, what) if n == 1), 0)
            dims.append(size)
        elif number == 3 and v:
            raise TFCheckpointError(f"{what}: shape of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, value: bytes, what: str) -> TensorEntry:
    dtype_code, masked_crc, n_slices = 0, None, 0
    shape: tuple[int, ...] = ()
    ints = {3: 0, 4: 0, 5: 0}  # shard_id, offset, size
    for number, _, v in _fields(value, what):
        if number == 1:
            dtype_code = int(v)
        elif number == 2 and isinstance(v, bytes):
            shape = _parse_shape(v, what)
        elif number in ints:
            ints[number] = _signed64(int(v))
        elif number == 6:
            masked_crc = int(v)
        elif number == 7:
            n_slices += 1
    return TensorEntry(name, dtype_code, shape, ints[3], ints[4], ints[5], masked_crc, n_slices)


# --------------------------------------------------------------------------- the table

TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48
_BLOCK_TRAILER = 5  # compression type byte + masked crc32c


def _block_handle(buf: bytes, pos: int, what: str) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos, what)
    size, pos = _varint(buf, pos, what)
    return offset, size, pos


def _read_block(table: bytes, offset: int, size: int, what: str) -> bytes:
    """A block's contents after checking its trailer's CRC and undoing its compression."""
    end = offset + size + _BLOCK_TRAILER
    if offset < 0 or end > len(table) - _FOOTER_LEN:
        raise TFCheckpointError(
            f"{what}: block at {offset} (+{size}) runs past the end of the file (truncated?)"
        )
    raw = table[offset : offset + size]
    kind = table[offset + size]
    stored = int.from_bytes(table[offset + size + 1 : end], "little")
    if mask_crc32c(crc32c(table[offset : offset + size + 1])) != stored:
        raise TFCheckpointError(f"{what}: block at {offset}: checksum mismatch (corrupt file)")
    if kind == 0:
        return raw
    if kind == 1:
        return snappy_decompress(raw)
    raise TFCheckpointError(f"{what}: block at {offset}: unknown compression type {kind}")


def _block_entries(block: bytes, what: str) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of a table block, undoing the shared-prefix key compression."""
    if len(block) < 4:
        raise TFCheckpointError(f"{what}: block too short")
    n_restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise TFCheckpointError(f"{what}: block has a bad restart count {n_restarts}")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, what)
        unshared, pos = _varint(block, pos, what)
        value_len, pos = _varint(block, pos, what)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise TFCheckpointError(f"{what}: corrupt block entry at {pos}")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def read_table(path: PathLike) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a LevelDB-format table file, in key order."""
    path = Path(path)
    try:
        table = path.read_bytes()
    except FileNotFoundError:
        raise TFCheckpointError(f"{path}: checkpoint index file not found") from None
    except OSError as e:
        raise TFCheckpointError(f"{path}: cannot read checkpoint index: {e.strerror}") from None
    what = str(path)
    if len(table) < _FOOTER_LEN:
        raise TFCheckpointError(f"{path}: {len(table)} bytes, too short for a checkpoint index (truncated?)")
    footer = table[-_FOOTER_LEN:]
    if int.from_bytes(footer[-8:], "little") != TABLE_MAGIC:
        raise TFCheckpointError(
            f"{path}: not a TensorFlow checkpoint index (bad table magic number; truncated, or "
            "another kind of file?)"
        )
    _, _, pos = _block_handle(footer, 0, what)  # metaindex: TensorFlow writes no meta blocks
    index_offset, index_size, _ = _block_handle(footer, pos, what)
    index = _read_block(table, index_offset, index_size, f"{what}: index block")
    for _, handle in _block_entries(index, f"{what}: index block"):
        offset, size, _ = _block_handle(handle, 0, what)
        yield from _block_entries(_read_block(table, offset, size, what), what)


# --------------------------------------------------------------------------- locating


def _index_file(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".index")


def _unescape(text: str) -> str:
    """Undo the C escapes of a text-format protobuf string (paths with quotes or UTF-8)."""
    raw = text.encode("utf-8")
    out = bytearray()
    simple = {ord("n"): 10, ord("t"): 9, ord("r"): 13, ord("\\"): 92, ord('"'): 34, ord("'"): 39}
    i = 0
    while i < len(raw):
        if raw[i] == 92 and i + 1 < len(raw):
            nxt = raw[i + 1]
            octal = re.match(rb"[0-7]{1,3}", raw[i + 1 : i + 4])
            if octal:
                out.append(int(octal.group(), 8) & 0xFF)
                i += 1 + len(octal.group())
                continue
            out.append(simple.get(nxt, nxt))
            i += 2
            continue
        out.append(raw[i])
        i += 1
    return out.decode("utf-8", errors="surrogateescape")


_STATE_LINE = re.compile(
    r"""^\s*model_checkpoint_path\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""", re.M
)


def _from_state_file(state: Path) -> Path:
    text = read_text_capped(state, OPTIONS_CAP, "checkpoint state file", TFCheckpointError)
    match = _STATE_LINE.search(text)
    if not match:
        raise TFCheckpointError(f"{state}: no model_checkpoint_path line in the checkpoint state file")
    named = Path(_unescape(match.group(1) if match.group(1) is not None else match.group(2)))
    prefix = named if named.is_absolute() else state.parent / named
    if _index_file(prefix).is_file():
        return prefix
    # A checkpoint directory that was moved keeps absolute paths of its old place.
    moved = state.parent / named.name
    if _index_file(moved).is_file():
        return moved
    raise TFCheckpointError(f"{state}: names checkpoint '{named}', but {_index_file(prefix)} does not exist")


_FILE_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")


def latest_checkpoint(path: PathLike) -> Path:
    """The checkpoint prefix that ``path`` designates.

    ``path`` may be a directory with a ``checkpoint`` state file (its
    ``model_checkpoint_path``, relative to the directory or absolute), a SavedModel or
    TF Hub module directory (``variables/variables``), a directory holding exactly one
    ``*.index``, a prefix such as ``model.ckpt-30``, or one of the prefix's files.
    """
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if os.path.lexists(state) and not state.is_dir():  # a link or device: refused when read
            return _from_state_file(state)
        saved = path / "variables" / "variables"
        if _index_file(saved).is_file():
            return saved
        found = sorted(path.glob("*.index"))
        if len(found) == 1:
            return found[0].with_suffix("")
        if found:
            names = ", ".join(p.name for p in found[:5])
            raise TFCheckpointError(
                f"{path}: several checkpoints ({names}) and no 'checkpoint' state file; pass a prefix"
            )
        raise TFCheckpointError(
            f"{path}: no TensorFlow checkpoint here (no 'checkpoint' state file, no *.index file, "
            "no variables/variables.index)"
        )
    prefix = path.with_name(_FILE_SUFFIX.sub("", path.name))
    if _index_file(prefix).is_file():
        return prefix
    if not path.exists() and not prefix.parent.is_dir():
        raise TFCheckpointError(f"{path}: no such checkpoint directory or prefix")
    raise TFCheckpointError(f"{path}: not a TensorFlow checkpoint: {_index_file(prefix)} does not exist")


# --------------------------------------------------------------------------- the reader


class CheckpointReader:
    """The variables of one TensorFlow V2 checkpoint.

    ``path`` is anything :func:`latest_checkpoint` accepts. The index is read at once;
    tensors are read on demand. ``verify`` checks each tensor's CRC-32C.
    """

    def __init__(self, path: PathLike, verify: bool = True) -> None:
        self.prefix = latest_checkpoint(path)
        self.index_path = _index_file(self.prefix)
        self.verify = verify
        self.header = BundleHeader()
        self.entries: dict[str, TensorEntry] = {}
        what = str(self.index_path)
        saw_header = False
        for key, value in read_table(self.index_path):
            if key == b"":
                self.header = _parse_header(value, f"{what}: header")
                saw_header = True
            elif not key.startswith(b"\x00"):  # keys of partitioned slices start with a 0 byte
                name = key.decode("utf-8", errors="replace")
                self.entries[name] = _parse_entry(name, value, f"{what}: entry '{name}'")
        if not saw_header:
            raise TFCheckpointError(f"{what}: no bundle header (not a tensor bundle index?)")
        if self.header.num_shards < 1:
            raise TFCheckpointError(f"{what}: header says {self.header.num_shards} shards")

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def variables(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Every variable's name with the dtype :meth:`read` returns and its shape."""
        return {name: (e.dtype, e.shape) for name, e in self.entries.items()}

    def data_file(self, shard_id: int) -> Path:
        """The path of data shard ``shard_id``."""
        n = self.header.num_shards
        return self.prefix.with_name(f"{self.prefix.name}.data-{shard_id:05d}-of-{n:05d}")

    def entry(self, name: str) -> TensorEntry:
        """The index entry of ``name``; unknown names raise with the closest known names."""
        try:
            return self.entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.entries), n=5, cutoff=0.6)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise TFCheckpointError(
                f"{self.prefix}: no variable '{name}' in the checkpoint ({len(self.entries)} variables){hint}"
            ) from None

    def read(self, name: str) -> np.ndarray:
        """The value of one variable as a (writable, native-endian) numpy array."""
        return self.read_many([name])[name]

    def read_many(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The values of ``names`` (every variable when None), reading each shard once."""
        entries = [self.entry(n) for n in (self.entries if names is None else names)]
        by_shard: dict[int, list[TensorEntry]] = {}
        for e in entries:
            self._check_readable(e)
            by_shard.setdefault(e.shard_id, []).append(e)
        values: dict[str, np.ndarray] = {}
        for shard, group in sorted(by_shard.items()):
            path = self.data_file(shard)
            try:
                with path.open("rb") as f:
                    file_size = os.fstat(f.fileno()).st_size
                    for e in sorted(group, key=lambda e: e.offset):
                        values[e.name] = self._read_entry(f, file_size, path, e)
            except FileNotFoundError:
                raise TFCheckpointError(
                    f"{path}: checkpoint data file not found (needed for '{group[0].name}')"
                ) from None
        return {e.name: values[e.name] for e in entries}

    def _check_readable(self, e: TensorEntry) -> None:
        where = f"{self.prefix}: variable '{e.name}'"
        if e.n_slices:
            raise TFCheckpointError(f"{where}: partitioned variable ({e.n_slices} slices) is not supported")
        if e.dtype_code not in _DTYPES:
            kind = _DTYPE_NAMES.get(e.dtype_code, f"DataType {e.dtype_code}")
            raise TFCheckpointError(f"{where}: dtype {kind} is not supported")
        if not 0 <= e.shard_id < self.header.num_shards:
            raise TFCheckpointError(f"{where}: shard {e.shard_id} of {self.header.num_shards}")
        if any(d < 0 for d in e.shape):
            raise TFCheckpointError(f"{where}: shape {e.shape} has unknown dimensions")
        itemsize = np.dtype(_DTYPES[e.dtype_code]).itemsize
        if int(np.prod(e.shape, dtype=np.int64)) * itemsize != e.size:
            raise TFCheckpointError(
                f"{where}: {e.size} bytes stored for shape {e.shape} ({itemsize}-byte items)"
            )

    def _read_entry(self, f, file_size: int, path: Path, e: TensorEntry) -> np.ndarray:
        if e.offset < 0 or e.offset + e.size > file_size:
            raise TFCheckpointError(
                f"{path}: variable '{e.name}' lies at bytes {e.offset}..{e.offset + e.size} but the file "
                f"has {file_size} (truncated?)"
            )
        buf = bytearray(e.size)
        f.seek(e.offset)
        if f.readinto(buf) != e.size:
            raise TFCheckpointError(f"{path}: short read of variable '{e.name}'")
        if self.verify and e.masked_crc is not None and mask_crc32c(crc32c(buf)) != e.masked_crc:
            raise TFCheckpointError(f"{path}: variable '{e.name}': checksum mismatch (corrupt data file)")
        dtype = np.dtype(_DTYPES[e.dtype_code])
        if self.header.big_endian:
            dtype = dtype.newbyteorder(">")
        array = np.frombuffer(buf, dtype).reshape(e.shape)
        if self.header.big_endian:
            array = array.astype(dtype.newbyteorder("="))
        if e.dtype_code == _BFLOAT16:
            # bfloat16 is the top half of a float32; numpy has no bfloat16 type.
            array = (array.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return array


def list_variables(prefix: PathLike) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every variable of the checkpoint at ``prefix``."""
    return CheckpointReader(prefix).variables()


def read_variables(
    prefix: PathLike, names: Iterable[str] | None = None, verify: bool = True
) -> dict[str, np.ndarray]:
    """Name -> value of ``names`` (default: every variable) of the checkpoint at ``prefix``."""
    return CheckpointReader(prefix, verify=verify).read_many(names)
