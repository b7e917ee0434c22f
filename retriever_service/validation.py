"""Request validation with messages that name the field, the limit and the fix.

Runs before any state changes, so a refused request leaves the collection exactly as it was.
"""

from collections.abc import Mapping, Sequence

from realm.errors import InvalidArgument, shown
from realm.names import collection_name
from realm.retriever.settings import Limits
from realm.retriever.store import StoredDocument

__all__ = [
    "collection_name",
    "document_id",
    "document_ids",
    "documents",
    "metadata",
    "query_text",
    "result_count",
    "search_filter",
]


def document_id(doc_id: str, limits: Limits, field: str = "id") -> str:
    """An id naming an existing document (GetDocument, Delete)."""
    if not doc_id:
        raise InvalidArgument(f"{field} is empty; name the document")
    if len(doc_id.encode()) > limits.max_id_bytes:
        raise InvalidArgument(
            f"{field} has {len(doc_id.encode()):,} bytes, above max_id_bytes={limits.max_id_bytes}"
            "; no document has such an id"
        )
    return doc_id


def document_ids(ids: Sequence[str], limits: Limits, field: str = "ids") -> list[str]:
    """The distinct ids of a Delete, in order; bounded so one call cannot hold the write lock
    for long."""
    if not ids:
        raise InvalidArgument(f"{field} is empty; name at least one document to delete")
    if len(ids) > limits.max_ids_per_delete:
        raise InvalidArgument(
            f"{field} has {len(ids):,} ids, above max_ids_per_delete="
            f"{limits.max_ids_per_delete}; split the delete into several calls"
        )
    for position, doc_id in enumerate(ids):
        document_id(doc_id, limits, f"{field}[{position}]")
    return list(dict.fromkeys(ids))


def query_text(text: str, limits: Limits, field: str = "query") -> str:
    if not text.strip():
        raise InvalidArgument(f"{field} is empty; send the words to search for")
    if len(text) > limits.max_query_chars:
        raise InvalidArgument(
            f"{field} has {len(text)} characters, above max_query_chars={limits.max_query_chars}; "
            "shorten the query or raise --max-query-chars"
        )
    return text


def result_count(k: int, limits: Limits, field: str = "k") -> int:
    """``k`` = 0 means the default; negative values cannot come over the wire (uint32)."""
    if k == 0:
        return limits.default_k
    if k < 0 or k > limits.max_k:
        raise InvalidArgument(
            f"{field}={k} is outside 1..max_k={limits.max_k}; lower k or raise --max-k"
        )
    return k


def documents(batch: Sequence[StoredDocument], limits: Limits, field: str = "documents") -> None:
    """Checks one batch: non-empty ids and text free of NUL, sizes, ids unique in the batch."""
    if len(batch) > limits.max_documents_per_message:
        raise InvalidArgument(
            f"{field} has {len(batch)} documents, above max_documents_per_message="
            f"{limits.max_documents_per_message}; split the batch into smaller messages"
        )
    seen: dict[str, int] = {}
    for position, document in enumerate(batch):
        where = f"{field}[{position}]"
        if not document.doc_id.strip():
            raise InvalidArgument(f"{where}.id is empty; give every document a unique id")
        if len(document.doc_id.encode()) > limits.max_id_bytes:
            raise InvalidArgument(
                f"{where}.id is longer than max_id_bytes={limits.max_id_bytes}; use a shorter id"
            )
        if document.doc_id in seen:
            raise InvalidArgument(
                f"{where}.id={shown(document.doc_id)} repeats {field}[{seen[document.doc_id]}].id; "
                "ids must be unique within a batch (send the final version once)"
            )
        seen[document.doc_id] = position
        for name, value in (
            ("id", document.doc_id),
            ("text", document.text),
            ("title", document.title),
        ):
            offset = value.find("\x00")
            if offset >= 0:
                # SQLite's string functions stop at NUL: the hit would lose everything after it.
                raise InvalidArgument(
                    f"{where}.{name} contains a NUL character at offset {offset} "
                    f"(id={shown(document.doc_id)}); remove it"
                )
        if len(document.title.encode()) > limits.max_title_bytes:
            raise InvalidArgument(
                f"{where}.title has {len(document.title.encode()):,} bytes "
                f"(id={shown(document.doc_id)}), above max_title_bytes={limits.max_title_bytes}"
                "; shorten it (the text is the place for long content)"
            )
        if not document.text.strip():
            raise InvalidArgument(
                f"{where}.text is empty (id={shown(document.doc_id)}); every document needs text"
            )
        if len(document.text) > limits.max_document_chars:
            raise InvalidArgument(
                f"{where}.text has {len(document.text)} characters "
                f"(id={shown(document.doc_id)}), above max_document_chars="
                f"{limits.max_document_chars}; split the document or raise --max-document-chars"
            )
        metadata(document.metadata, limits, f"{where}.metadata")


def metadata(entries: Mapping[str, str], limits: Limits, field: str) -> None:
    if len(entries) > limits.max_metadata_entries:
        raise InvalidArgument(
            f"{field} has {len(entries)} entries, above max_metadata_entries="
            f"{limits.max_metadata_entries}; keep only the fields you filter or show"
        )
    for key, value in entries.items():
        if not key:
            raise InvalidArgument(f"{field} has an empty key; name every metadata field")
        if len(key.encode()) > limits.max_metadata_key_bytes:
            raise InvalidArgument(
                f"{field} key {shown(key)} is longer than max_metadata_key_bytes="
                f"{limits.max_metadata_key_bytes}"
            )
        if len(value.encode()) > limits.max_metadata_value_bytes:
            raise InvalidArgument(
                f"{field}[{shown(key)}] has {len(value.encode()):,} bytes, above "
                f"max_metadata_value_bytes={limits.max_metadata_value_bytes}; metadata is for "
                "short fields to filter and show"
            )


def search_filter(entries: Mapping[str, str], limits: Limits, field: str) -> None:
    """A search's metadata filter: few entries, each as bounded as stored metadata."""
    if len(entries) > limits.max_filter_entries:
        raise InvalidArgument(
            f"{field} has {len(entries):,} entries, above max_filter_entries="
            f"{limits.max_filter_entries}"
        )
    metadata(entries, limits, field)
