"""The answers of ``POST /v1/embed``: JSON, two ``.npy`` arrays, or an Arrow IPC stream.

Each takes the per-sentence arrays the batcher returns (float32; ``[n, D]`` for elmo,
top, average and word_emb, ``[L, n, D]`` for all; ``[D]`` or ``[L, D]`` once pooled or for
default) with the sentences' token counts, and writes them without rounding: every
format reads back bit for bit equal to the arrays. The format follows the request's
``Accept`` header (:func:`negotiate`).
"""

from __future__ import annotations

import io
import json
from typing import Literal

import numpy as np

__all__ = [
    "ARROW_LAYOUT",
    "ARROW_TYPE",
    "JSON_TYPE",
    "NPY_LAYOUT",
    "NPY_TYPE",
    "Format",
    "encode_arrow",
    "encode_json",
    "encode_npy",
    "negotiate",
]

Format = Literal["json", "npy", "arrow"]

JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"
ARROW_TYPE = "application/vnd.apache.arrow.stream"

NPY_LAYOUT = (
    "Two .npy arrays back to back (read them with np.load twice from one file object): "
    "first the lengths, int64 [N] (tokens per sentence), then the embeddings, float32, "
    "padded with zeros to the longest sentence of the request: [N, T, D] for elmo, top, "
    "average and word_emb, [N, L, T, D] for all; pooled (pool=mean) or default: [N, D], "
    "or [N, L, D] for all."
)
ARROW_LAYOUT = (
    "An Arrow IPC stream (pyarrow.ipc.open_stream) of one record batch, a row per sentence: "
    "length (int64, tokens) and embedding, float32 without padding: a list of tokens, each a "
    "fixed-size list of D, for elmo, top, average and word_emb; for all, a fixed-size list "
    "of L such lists; pooled (pool=mean) or default: a fixed-size list of D (of L of them "
    "for all). The schema's metadata holds layers and pool."
)


def negotiate(accept: str) -> Format:
    """The answer's format for an ``Accept`` header: npy or Arrow when named, else JSON."""
    if NPY_TYPE in accept:
        return "npy"
    if ARROW_TYPE in accept:
        return "arrow"
    return "json"


def encode_json(arrays: list[np.ndarray], lengths: list[int], layers: str, pool: str | None) -> bytes:
    """The JSON body (float32 values written as the shortest float64 repr: exact on reading back)."""
    body = {"layers": layers, "pool": pool, "lengths": lengths, "embeddings": [a.tolist() for a in arrays]}
    return json.dumps(body, separators=(",", ":")).encode()


def _padded(arrays: list[np.ndarray], lengths: list[int], pooled: bool) -> np.ndarray:
    """The per-sentence arrays in one zero-padded array (see :data:`NPY_LAYOUT`)."""
    if pooled:
        return np.stack(arrays).astype(np.float32, copy=False)
    first = arrays[0]
    width = max(lengths)
    shape = (len(arrays), *first.shape[:-2], width, first.shape[-1])
    out = np.zeros(shape, dtype=np.float32)
    for i, (a, n) in enumerate(zip(arrays, lengths)):
        out[i, ..., :n, :] = a
    return out


def encode_npy(arrays: list[np.ndarray], lengths: list[int], pooled: bool) -> bytes:
    """The binary body of :data:`NPY_LAYOUT`."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(lengths, dtype=np.int64), allow_pickle=False)
    np.save(buf, _padded(arrays, lengths, pooled), allow_pickle=False)
    return buf.getvalue()


def encode_arrow(
    arrays: list[np.ndarray], lengths: list[int], layers: str, pool: str | None, pooled: bool
) -> bytes:
    """The body of :data:`ARROW_LAYOUT` (needs pyarrow, part of the ``[serve]`` extra)."""
    import pyarrow as pa

    dim = arrays[0].shape[-1]
    values = pa.array(np.concatenate([a.reshape(-1) for a in arrays]), type=pa.float32())
    vectors = pa.FixedSizeListArray.from_arrays(values, dim)  # one per token (or per sentence)
    n_layers = arrays[0].shape[0] if arrays[0].ndim == (2 if pooled else 3) else 0
    if pooled:
        column = vectors if not n_layers else pa.FixedSizeListArray.from_arrays(vectors, n_layers)
    else:
        # Offsets into the token vectors: one list per sentence, or per sentence and layer.
        per_list = np.repeat(np.asarray(lengths, dtype=np.int64), max(1, n_layers))
        offsets = pa.array(np.concatenate([[0], np.cumsum(per_list)]).astype(np.int32))
        column = pa.ListArray.from_arrays(offsets, vectors)
        if n_layers:
            column = pa.FixedSizeListArray.from_arrays(column, n_layers)
    schema = pa.schema(
        [pa.field("length", pa.int64()), pa.field("embedding", column.type)],
        metadata={"layers": layers, "pool": pool or ""},
    )
    batch = pa.RecordBatch.from_arrays([pa.array(lengths, type=pa.int64()), column], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()
