"""Copy-constrained decoding: under ``strict`` grounding every word the model writes is copied
from a passage in its prompt, from the question, or is one of a few connecting words.

At each step the model may only take a token that

- continues the span it is copying (the bytes so far plus the token's bytes occur in a source,
  at a word start: a suffix match over the sources' bytes),
- starts a new span at a word start of a source, at the beginning or after a connecting word
  (so two copied content words cannot be glued into a phrase no source has),
- is a connecting word or punctuation (``CONNECTORS``), once a span ended on a word boundary, or
- ends the answer, once something was written and the span in progress ends on a word boundary.

Matching is on bytes, not text, so a token that holds half of a UTF-8 character ("ó" split in
two) is handled like any other. The constraint says nothing about *which* span is right; that is
still the model's choice, among the spans the passages offer. Where each span came from is found
afterwards, exactly, by ``spans.locate`` (the text is a source's substring by construction).
"""

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

Grounding = Literal["strict", "cite", "free"]
AnswerStyle = Literal["short", "sentence"]

# Words and marks an answer may use to join copied spans ("X is Y", "in Z, and W").
CONNECTORS = frozenset(
    ". , ; : ' \" ( ) - a an the is are was were be been has have had of in on at to by for "
    "from with as and or but it its this that which who whom whose there their also located "
    "called known about than into during between".split()
)
REPEAT_SPAN = 4  # tokens that may not occur twice in one answer
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SEPARATOR = b"\x00"


def token_pieces(tokenizer: PreTrainedTokenizerBase) -> list[bytes]:
    """The bytes each token id stands for, spaces included.

    Byte-level BPE (GPT-2, SmolLM, Llama 3) spells bytes as printable characters (``Ġ`` is a
    space); SentencePiece spells a space ``▁`` and raw bytes ``<0xE2>``. Anything else falls back
    to decoding the token alone. Special tokens get no bytes and are never copied."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_tokens)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}  # type: ignore[no-untyped-call]
    byte_level = "Ġ" in tokenizer.get_vocab() or "Ġthe" in tokenizer.get_vocab()
    pieces: list[bytes] = []
    for token_id, token in enumerate(tokens):
        if token is None or token in special:
            pieces.append(b"")
        elif byte_level:
            known = all(c in byte_of for c in token)
            pieces.append(bytes(byte_of[c] for c in token) if known else b"")
        elif match := _BYTE_TOKEN.fullmatch(token):
            pieces.append(bytes([int(match.group(1), 16)]))
        elif "▁" in token:
            pieces.append(token.replace("▁", " ").encode())
        else:
            pieces.append(str(tokenizer.decode([token_id])).encode())
    return pieces


class Vocabulary:
    """One model's tokens as bytes, indexed for the constraint; built once per loaded model."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: Iterable[int]) -> None:
        self.pieces = token_pieces(tokenizer)
        self.eos = frozenset(eos_token_ids)
        self.by_bytes: dict[bytes, list[int]] = {}
        self.by_word: dict[bytes, list[int]] = {}  # a word's start, with or without its space
        for token_id, piece in enumerate(self.pieces):
            if piece:
                self.by_bytes.setdefault(piece, []).append(token_id)
                stripped = piece.lstrip(b" ")
                if stripped and len(piece) - len(stripped) <= 1:
                    self.by_word.setdefault(stripped, []).append(token_id)
        self.longest = max((len(piece) for piece in self.pieces), default=1)
        self.connectors = frozenset(
            token_id
            for word in CONNECTORS | {word.capitalize() for word in CONNECTORS}
            for piece in (word.encode(), b" " + word.encode())
            for token_id in self.by_bytes.get(piece, [])
        )


@dataclass
class CopyConstraint:
    """The state of one request's constrained answer; ``allowed`` before each token,
    ``advance`` after it."""

    vocabulary: Vocabulary
    sources: Sequence[str]
    # Where in the sources (their bytes, joined by NUL) the answer's first span may start; None:
    # anywhere a span may. A short answer opens with the fact, not with a repeat of the question.
    may_open: Callable[[bytes, int], bool] | None = None
    # Derived in __post_init__ and advanced by ``advance``; not arguments.
    _blob: bytes = field(init=False, default=b"")
    _word_starts: list[int] = field(init=False, default_factory=list)
    _openings: list[int] = field(init=False, default_factory=list)
    _start_tokens: frozenset[int] = field(init=False, default=frozenset())
    _opening_tokens: frozenset[int] = field(init=False, default=frozenset())
    _ends: list[int] = field(init=False, default_factory=list)  # the copied span's ends, in _blob
    # The tokens so far, and which token followed each three: a copy may not loop back on
    # itself ("It is a masterpiece. It is a masterpiece. ..."), so no four tokens repeat.
    _history: list[int] = field(init=False, default_factory=list)
    _followers: dict[tuple[int, ...], set[int]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._blob = _SEPARATOR.join(" ".join(text.split()).encode() for text in self.sources)
        blob = self._blob
        # A span starts at a word's first byte or at a punctuation mark.
        self._word_starts = [
            at
            for at in range(len(blob))
            if (_word_char(blob[at]) and (at == 0 or not _word_char(blob[at - 1])))
            or (not _word_char(blob[at]) and blob[at] not in b" \x00")
        ]
        self._start_tokens = self._tokens_at(self._word_starts)
        if self.may_open is None:
            self._openings, self._opening_tokens = self._word_starts, self._start_tokens
        else:
            self._openings = [at for at in self._word_starts if self.may_open(blob, at)]
            self._opening_tokens = self._tokens_at(self._openings)

    def _tokens_at(self, positions: Iterable[int]) -> frozenset[int]:
        """Every token that spells the beginning of the sources at one of ``positions``."""
        tokens: set[int] = set()
        words = self.vocabulary.by_word
        for at in positions:
            for size in range(1, self.vocabulary.longest + 1):
                tokens.update(words.get(self._blob[at : at + size], ()))
        return frozenset(tokens)

    def allowed(self) -> list[int]:
        """The token ids the next position may take."""
        tokens = self._allowed()
        repeats = self._followers.get(tuple(self._history[-(REPEAT_SPAN - 1) :]), set())
        fresh = [token for token in tokens if token not in repeats]
        return fresh or list(self.vocabulary.eos)

    def _allowed(self) -> list[int]:
        vocabulary = self.vocabulary
        if not self._history and self.may_open is not None:
            return list(self._opening_tokens)
        if not self._ends:
            tokens = self._unglued(self._start_tokens | vocabulary.connectors)
            if self._history:
                tokens |= vocabulary.eos
            return list(tokens)
        tokens = set()
        blob = self._blob
        for end in self._ends:
            for size in range(1, vocabulary.longest + 1):
                tokens.update(vocabulary.by_bytes.get(blob[end : end + size], ()))
        if self._at_word_end():
            tokens |= self._unglued(vocabulary.connectors) | vocabulary.eos
            if self._on_connecting_word():  # "... is a" + " work of art": a new span may start
                tokens |= self._unglued(self._start_tokens)
        return list(tokens)

    def _on_connecting_word(self) -> bool:
        """Whether the span in progress ends with a connecting word ("the Mona Lisa is a")."""
        for end in self._ends:
            start = end
            while start > 0 and _word_char(self._blob[start - 1]):
                start -= 1
            if self._blob[start:end].decode("utf-8", "ignore").casefold() in CONNECTORS:
                return True
        return False

    def _unglued(self, tokens: frozenset[int]) -> set[int]:
        """``tokens`` less those that would glue a new word onto the last one ("a"+"of")."""
        if not self._history or not _word_char(self.vocabulary.pieces[self._history[-1]][-1:][0]):
            return set(tokens)
        pieces = self.vocabulary.pieces
        return {t for t in tokens if not _word_char(pieces[t][0])}

    def advance(self, token: int) -> None:
        """Records the token the row took (one of ``allowed``)."""
        starts = self._word_starts if self._history else self._openings
        if len(self._history) >= REPEAT_SPAN - 1:
            key = tuple(self._history[-(REPEAT_SPAN - 1) :])
            self._followers.setdefault(key, set()).add(token)
        self._history.append(token)
        piece = self.vocabulary.pieces[token]
        continued = [end + len(piece) for end in self._ends if self._blob.startswith(piece, end)]
        if continued and piece:
            self._ends = continued
            return
        stripped = piece.lstrip(b" ")
        if token in self.vocabulary.connectors or not stripped:
            self._ends = []
            return
        self._ends = [at + len(stripped) for at in starts if self._blob.startswith(stripped, at)]

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with every token the constraint forbids at -inf."""
        masked = torch.full_like(logits, float("-inf"))
        allowed = torch.tensor(self.allowed(), dtype=torch.long, device=logits.device)
        masked[allowed] = logits[allowed]
        return masked

    def _at_word_end(self) -> bool:
        """Whether the span in progress ends after a whole word or mark (not after a space: SmolLM
        spells " 1889" as " " then digits, and the digits must follow)."""
        blob = self._blob
        return any(
            blob[end - 1] != 0x20
            and (end >= len(blob) or not (_word_char(blob[end]) and _word_char(blob[end - 1])))
            for end in self._ends
        )


def _word_char(byte: int) -> bool:
    """Letters, digits and every byte of a multi-byte UTF-8 character count as word bytes."""
    return byte >= 0x80 or chr(byte).isalnum()
