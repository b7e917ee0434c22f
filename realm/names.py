"""The collection-name rule, one copy for every service.

A name becomes a directory under the retriever's data directory, so it must be safe as one:
``fullmatch`` (not ``match`` with ``$``, which lets ``"abc\\n"`` through) of a short ASCII set.
"""

import re

from realm.errors import InvalidArgument, shown

COLLECTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def collection_name(name: str, field: str = "collection") -> str:
    """``name`` when it is a valid collection name; INVALID_ARGUMENT naming ``field`` if not."""
    if COLLECTION_NAME.fullmatch(name) is None:
        raise InvalidArgument(
            f"{field}={shown(name)} is not a valid collection name; use 1-64 characters of "
            "letters, digits, '_' or '-'"
        )
    return name
