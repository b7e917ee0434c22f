"""Turns the model's ``field: value`` lines into exactly the fields the caller asked for.

The model is asked for one line per field rather than JSON: a line format survives a small
model's slips (a missing quote breaks JSON, not a line), and the service builds the JSON itself,
so the object always has exactly the requested keys. Each value is tied to the passage that
contains it, or to the one sharing most of its words; a value no passage supports keeps
citation 0 so the caller can treat it with suspicion.
"""

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from realm.generator.citations import best_passage, content_words
from realm.generator.prompts import RetrievedPassage

FIELD_NAME = re.compile(r"[A-Za-z0-9_ ]{1,64}")
_MARKER = re.compile(r"\s*\[(\d{1,3})\]")
# A value ends where the model starts another "key: value" pair on the same line.
_NEXT_PAIR = re.compile(r",\s*[A-Za-z_][A-Za-z0-9_ ]{0,63}:")
_UNKNOWN = frozenset({"", "unknown", "n/a", "na", "none", "not mentioned", "not given", "-"})


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    value: str
    found: bool
    citation: int


def field_key(name: str) -> str:
    """How two spellings of a field name are told to be the same ("Birth_year", "birth year")."""
    return " ".join(name.replace("_", " ").casefold().split())


def parse_fields(
    text: str, fields: Sequence[str], passages: Sequence[RetrievedPassage]
) -> list[Field]:
    """One ``Field`` per requested name, in request order; the first line for a name wins."""
    wanted = {field_key(name): name for name in fields}
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        key = field_key(name.strip(" -*\t"))
        if sep and key in wanted and wanted[key] not in values:
            values[wanted[key]] = _NEXT_PAIR.split(value, maxsplit=1)[0].strip().strip('"').strip()
    passage_words = [content_words(f"{p.title} {p.text}") for p in passages]
    result: list[Field] = []
    for name in fields:
        raw = values.get(name, "")
        markers = [int(m) for m in _MARKER.findall(raw)]
        value = _MARKER.sub("", raw).strip().rstrip(".").strip()
        if value.casefold() in _UNKNOWN:
            result.append(Field(name, "", found=False, citation=0))
            continue
        result.append(
            Field(
                name,
                value,
                found=True,
                citation=_source_of(value, markers, passages, passage_words),
            )
        )
    return result


def _source_of(
    value: str,
    markers: Sequence[int],
    passages: Sequence[RetrievedPassage],
    passage_words: Sequence[set[str]],
) -> int:
    for number in markers:
        if 1 <= number <= len(passages):
            return number
    folded = value.casefold()
    for number, passage in enumerate(passages, start=1):
        if folded in passage.text.casefold() or folded in passage.title.casefold():
            return number
    return best_passage(value, passage_words) or 0


def to_json(fields: Sequence[Field]) -> str:
    return json.dumps({f.name: f.value if f.found else None for f in fields}, ensure_ascii=False)
