"""The answers' formats: every one reads back bit for bit equal to the batcher's arrays."""

from __future__ import annotations

import io

import numpy as np
import pytest

from elmo.serve.formats import encode_arrow, encode_json, encode_npy, negotiate

pa = pytest.importorskip("pyarrow", reason="Arrow answers need pyarrow (the [serve] extra)")

LENGTHS = [3, 1, 5]
D, L = 4, 3


def _arrays(layers: str, pooled: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for n in LENGTHS:
        shape: tuple[int, ...] = (D,) if pooled else (n, D)
        if layers == "all":
            shape = (L, *shape)
        out.append(rng.standard_normal(shape).astype(np.float32))
    return out


def _from_arrow(body: bytes) -> tuple[list[int], list[np.ndarray], dict[bytes, bytes]]:
    table = pa.ipc.open_stream(body).read_all()
    arrays = [np.asarray(row, dtype=np.float32) for row in table.column("embedding").to_pylist()]
    return table.column("length").to_pylist(), arrays, table.schema.metadata


@pytest.mark.parametrize("layers", ["elmo", "all"])
@pytest.mark.parametrize("pooled", [False, True])
def test_arrow_reads_back_bit_for_bit(layers, pooled):
    arrays = _arrays(layers, pooled)
    body = encode_arrow(arrays, LENGTHS, layers, "mean" if pooled else None, pooled)
    lengths, got, metadata = _from_arrow(body)
    assert lengths == LENGTHS
    assert metadata == {b"layers": layers.encode(), b"pool": b"mean" if pooled else b""}
    for g, a in zip(got, arrays):
        assert g.shape == a.shape
        np.testing.assert_array_equal(g, a)


def test_arrow_columns_are_typed_for_readers_in_any_language():
    schema = pa.ipc.open_stream(encode_arrow(_arrays("all", False), LENGTHS, "all", None, False)).schema
    assert schema.field("length").type == pa.int64()
    # [L, n, D] per sentence: L lists of tokens, each D float32.
    assert schema.field("embedding").type == pa.list_(pa.list_(pa.list_(pa.float32(), D)), L)
    flat = pa.ipc.open_stream(encode_arrow(_arrays("elmo", False), LENGTHS, "elmo", None, False)).schema
    assert flat.field("embedding").type == pa.list_(pa.list_(pa.float32(), D))


@pytest.mark.parametrize("layers", ["elmo", "all"])
@pytest.mark.parametrize("pooled", [False, True])
def test_npy_and_json_read_back_bit_for_bit(layers, pooled):
    import json

    arrays = _arrays(layers, pooled)
    f = io.BytesIO(encode_npy(arrays, LENGTHS, pooled))
    lengths, data = np.load(f), np.load(f)
    assert lengths.tolist() == LENGTHS and data.dtype == np.float32
    for i, (a, n) in enumerate(zip(arrays, LENGTHS)):
        np.testing.assert_array_equal(data[i] if pooled else data[i, ..., :n, :], a)
        if not pooled:
            assert not data[i, ..., n:, :].any()
    body = json.loads(encode_json(arrays, LENGTHS, layers, None))
    for e, a in zip(body["embeddings"], arrays):
        np.testing.assert_array_equal(np.asarray(e, dtype=np.float32), a)


def test_the_accept_header_picks_the_format():
    assert negotiate("") == "json"
    assert negotiate("application/json") == "json"
    assert negotiate("*/*") == "json"
    assert negotiate("application/x-npy") == "npy"
    assert negotiate("application/vnd.apache.arrow.stream") == "arrow"
    assert negotiate("application/vnd.apache.arrow.stream, application/json;q=0.5") == "arrow"
