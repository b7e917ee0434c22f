"""What one write-ahead-log record holds: an upsert (documents and their vectors) or a delete.

Upserts carry their passage vectors (float32, in passage order), so replaying the log after a
restart needs no model run: recovery costs chunking, analysis and SQLite inserts only. Layout:
one kind byte, a u32 length, a UTF-8 JSON body, then (upserts) the raw vector bytes. No pickle.
"""

import json
import struct
from dataclasses import dataclass

import numpy as np

from realm.retriever.store import StoredDocument
from realm.retriever.topk import FloatArray

_LENGTH = struct.Struct("<I")
_UPSERT = b"U"
_DELETE = b"D"


@dataclass(frozen=True, slots=True)
class UpsertRecord:
    documents: list[StoredDocument]
    vectors: FloatArray


@dataclass(frozen=True, slots=True)
class DeleteRecord:
    doc_ids: list[str]


def encode_upsert(documents: list[StoredDocument], vectors: FloatArray) -> bytes:
    body = json.dumps(
        [[d.doc_id, d.title, d.text, d.metadata] for d in documents], ensure_ascii=False
    ).encode("utf-8")
    raw = np.ascontiguousarray(vectors, dtype="<f4")
    return _UPSERT + _LENGTH.pack(len(body)) + body + _LENGTH.pack(raw.shape[1]) + raw.tobytes()


def encode_delete(doc_ids: list[str]) -> bytes:
    body = json.dumps(doc_ids, ensure_ascii=False).encode("utf-8")
    return _DELETE + _LENGTH.pack(len(body)) + body


def decode(payload: bytes) -> UpsertRecord | DeleteRecord:
    kind = payload[:1]
    (length,) = _LENGTH.unpack_from(payload, 1)
    body_end = 1 + _LENGTH.size + length
    body = json.loads(payload[1 + _LENGTH.size : body_end].decode("utf-8"))
    if kind == _DELETE:
        return DeleteRecord([str(doc_id) for doc_id in body])
    if kind != _UPSERT:
        raise ValueError(f"unknown log record kind {kind!r}")
    (dimension,) = _LENGTH.unpack_from(payload, body_end)
    vectors = np.frombuffer(payload, dtype="<f4", offset=body_end + _LENGTH.size)
    documents = [StoredDocument(i, text, title, dict(meta)) for i, title, text, meta in body]
    return UpsertRecord(documents, vectors.reshape(-1, dimension).astype(np.float32))
