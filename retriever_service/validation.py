"""Request validation with messages that name the field, the limit and the fix.

Runs before any state changes, so a refused request leaves the collection exactly as it was.
"""

from collections.abc import Mapping, Sequence

from realm.errors import InvalidArgument
from retriever_service.settings import COLLECTION_NAME, Limits
from retriever_service.store import StoredDocument


def collection_name(name: str, field: str = "collection") -> str:
    if not COLLECTION_NAME.match(name):
        raise InvalidArgument(
            f"{field}={name!r} is not a valid collection name; use 1-64 characters of "
            "letters, digits, '_' or '-'"
        )
    return name


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
                f"{where}.id={document.doc_id!r} repeats {field}[{seen[document.doc_id]}].id; "
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
                    f"(id={document.doc_id!r}); remove it"
                )
        if not document.text.strip():
            raise InvalidArgument(
                f"{where}.text is empty (id={document.doc_id!r}); every document needs text"
            )
        if len(document.text) > limits.max_document_chars:
            raise InvalidArgument(
                f"{where}.text has {len(document.text)} characters (id={document.doc_id!r}), above "
                f"max_document_chars={limits.max_document_chars}; split the document or raise "
                "--max-document-chars"
            )
        metadata(document.metadata, limits, f"{where}.metadata")


def metadata(entries: Mapping[str, str], limits: Limits, field: str) -> None:
    if len(entries) > limits.max_metadata_entries:
        raise InvalidArgument(
            f"{field} has {len(entries)} entries, above max_metadata_entries="
            f"{limits.max_metadata_entries}; keep only the fields you filter or show"
        )
    for key in entries:
        if not key:
            raise InvalidArgument(f"{field} has an empty key; name every metadata field")
