"""``realm ingest | search | stats | compact | reindex | health``: the retriever's data from a
shell."""

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer

from realm.app.cli.output import (
    console,
    counts_table,
    fail,
    hits_json,
    hits_table,
    print_json,
    progress_bar,
)
from realm.app.cli.shared import (
    BackendOpt,
    CollectionOpt,
    JsonOpt,
    LanguageOpt,
    ModelOpt,
    ModeOpt,
    Target,
    client_errors,
    connection,
    search_mode,
)
from realm.app.corpus import Refused, read_documents
from realm.client import (
    CollectionStats,
    Document,
    IngestInterrupted,
    NotFound,
    ReindexStatus,
    RetrieverClient,
    UpsertSummary,
)
from realm.ports import RETRIEVER_TARGET

STATS_FIELDS = (
    "documents",
    "passages",
    "generation",
    "tail_passages",
    "tombstones",
    "wal_bytes",
    "last_sequence",
    "lag",
    "index_bytes",
)
# How often ``realm reindex`` asks how far the server has got.
REINDEX_POLL_SECONDS = 1.0


def ingest(
    path: Annotated[
        Path, typer.Argument(exists=True, help="BEIR corpus.jsonl, JSONL, or .txt/.md files.")
    ],
    collection: CollectionOpt,
    target: Target = RETRIEVER_TARGET,
    batch_size: Annotated[
        int, typer.Option(min=1, max=2048, help="Documents per acknowledged write.")
    ] = 256,
    skip: Annotated[
        int,
        typer.Option(
            min=0,
            help="Leave out the first N documents: resumes an interrupted ingest (its error "
            "says how many were acknowledged).",
        ),
    ] = 0,
    compact: Annotated[
        bool,
        typer.Option(
            help="Fold what was sent into a new index generation at the end (a bulk load); "
            "without it the documents stay in the exactly-searched tail until the server's "
            "threshold starts a build."
        ),
    ] = True,
    language: LanguageOpt = None,
    embedding_model: ModelOpt = None,
    embedding_backend: BackendOpt = None,
    shards: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Shards a new collection is split over (a cluster's replicas hold them; "
            "docs/operations.md). An existing collection keeps its own.",
        ),
    ] = 1,
) -> None:
    """Index documents, creating the collection if needed; exits 1 if any document was refused."""
    documents: list[Document] = []
    refused: list[Refused] = []
    try:
        for item in read_documents(path):
            if isinstance(item, Refused):
                refused.append(item)
            else:
                documents.append(item)
    except ValueError as error:
        fail(str(error), code=2)
    with client_errors(), RetrieverClient(target, options=connection(30.0)) as client:
        ensure_collection(
            client,
            collection,
            NewCollection(language, embedding_model, embedding_backend, shards),
        )
        try:
            summary = upload(client, collection, documents[skip:], batch_size)
        except IngestInterrupted as error:
            fail(f"{error.code.name}: {error}; rerun with --skip {skip + error.acknowledged}")
        generation = client.compact(collection) if compact else summary.generation
    console.print(
        f"{collection}: {summary.inserted} inserted, {summary.replaced} replaced, "
        f"{summary.passages} passages, generation {generation}"
    )
    if refused:
        for item in refused:
            console.print(f"[red]refused[/] {item.where}: {item.reason}", highlight=False)
        fail(f"{len(refused)} document(s) refused; fix them and ingest again")


@dataclass(frozen=True, slots=True)
class NewCollection:
    """What the command line says a collection is made with; None leaves it to the server."""

    language: str | None = None
    embedding_model: str | None = None
    embedding_backend: str | None = None
    shards: int = 1


def ensure_collection(
    client: RetrieverClient, name: str, wanted: NewCollection = NewCollection()
) -> bool:
    """Creates ``name`` when missing, with what ``wanted`` names; returns True if it was
    created. An existing collection made otherwise than asked exits 2: its index and the new
    documents' would not be comparable."""
    existing = next((c for c in client.list_collections() if c.name == name), None)
    if existing is None:
        client.create_collection(
            name,
            language=wanted.language or "",
            embedding_model=wanted.embedding_model or "",
            embedding_backend=wanted.embedding_backend or "",
            shards=wanted.shards,
        )
        return True
    for option, asked, actual in (
        ("language", wanted.language, existing.language),
        ("embedding-model", wanted.embedding_model, existing.embedding_model),
        ("embedding-backend", wanted.embedding_backend, existing.embedding_backend),
    ):
        if asked and asked != actual:
            fail(
                f"collection {name!r} has {option} {actual}, not {asked}: leave out "
                f"--{option}, or ingest into a new collection",
                code=2,
            )
    return False


def upload(
    client: RetrieverClient, collection: str, documents: list[Document], batch_size: int
) -> UpsertSummary:
    """Sends ``documents`` in acknowledged batches, showing how many are durable."""
    with progress_bar("indexing") as progress:
        task = progress.add_task("indexing", total=len(documents))
        return client.ingest(
            collection,
            documents,
            batch_size=batch_size,
            progress=lambda acknowledged: progress.advance(task, acknowledged),
        )


def index_missing(
    client: RetrieverClient,
    collection: str,
    documents: list[Document],
    wanted: NewCollection = NewCollection(),
) -> None:
    """Indexes what the persisted collection lacks, so a second run starts in seconds."""
    ensure_collection(client, collection, wanted)
    indexed = client.stats(collection)[0].documents
    missing = documents
    if indexed:
        missing = []
        for document in documents:
            try:
                client.get(collection, document.id)
            except NotFound:
                missing.append(document)
    if missing:
        summary = upload(client, collection, missing, 256)
        client.compact(collection)  # later starts load one generation, nothing to replay
        console.print(
            f"indexed {summary.inserted + summary.replaced} documents ({summary.passages} passages)"
        )
    else:
        console.print(f"index found: {indexed} documents in {collection!r}")


def health(
    target: Annotated[str, typer.Option("--target", help="Server address HOST:PORT.")],
    tls_ca: Annotated[
        Path | None, typer.Option(help="PEM to verify a TLS server (a probe inside its pod).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1)] = 5.0,
) -> None:
    """Exit 0 if the server reports SERVING, 1 otherwise: a readiness probe for TLS servers,
    which Kubernetes' own gRPC probe cannot reach (it speaks plaintext only)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca is None:
        channel = grpc.insecure_channel(target)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
        channel = grpc.secure_channel(target, credentials)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as error:
            fail(f"{target}: {error.code().name}: {error.details()}")
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        fail(f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}")
    console.print(f"{target}: SERVING")


def stats(
    collection: Annotated[
        str, typer.Option("--collection", "-c", help="One collection; default all.")
    ] = "",
    as_json: JsonOpt = False,
    digest: Annotated[
        bool,
        typer.Option(
            "--digest", help="Also the digest of each collection's content (reads it whole)."
        ),
    ] = False,
    target: Target = RETRIEVER_TARGET,
) -> None:
    """Show each collection's size, generation, tail, write-ahead log and (in a cluster) how
    far this replica is behind the collection's log."""
    with client_errors(), RetrieverClient(target, options=connection(30.0)) as client:
        collections = client.stats(collection, digest=digest)
    rows = {_label(c): {f: int(getattr(c, f)) for f in STATS_FIELDS} for c in collections}
    if as_json:
        # The digest tells whether replicas at the same sequence serve the same content.
        print_json({_label(c): {**rows[_label(c)], **_model_json(c)} for c in collections})
        return
    console.print(counts_table(f"collections on {target}", rows, STATS_FIELDS))
    for c in collections:
        label = _label(c)
        console.print(f"{label}: model {c.embedding_model} ({c.embedding_backend}){_reindex(c)}")
        if digest:
            console.print(f"{label}: state digest {c.state_digest}")


def _label(stats: CollectionStats) -> str:
    """A row's name: each shard a replica holds of a sharded collection is a row of its own."""
    return f"{stats.name} shard {stats.shard}/{stats.shards}" if stats.shards else stats.name


def _model_json(stats: CollectionStats) -> dict[str, object]:
    return {
        "state_digest": stats.state_digest,
        "embedding_model": stats.embedding_model,
        "embedding_backend": stats.embedding_backend,
        "encoder_fingerprint": stats.encoder_fingerprint,
        "reindex": None if stats.reindex is None else asdict(stats.reindex),
    }


def _reindex(stats: CollectionStats) -> str:
    status = stats.reindex
    if status is None:
        return ""
    if status.running:
        return (
            f"; reindexing with {status.embedding_model}: {status.passages_done:,} of "
            f"{status.passages_total:,} passages"
        )
    return f"; reindex with {status.embedding_model} failed: {status.error}" if status.error else ""


def compact(collection: CollectionOpt, target: Target = RETRIEVER_TARGET) -> None:
    """Fold a collection's recent writes into a new index generation now."""
    with client_errors(), RetrieverClient(target, options=connection(30.0)) as client:
        generation = client.compact(collection)
    console.print(f"{collection}: generation {generation} serves every write so far")


def reindex(
    collection: CollectionOpt,
    embedding_model: Annotated[
        str,
        typer.Option(
            help="The model to re-encode with: one the server offers, e.g. a version made by "
            "realm train retriever (cranfield-v1)."
        ),
    ],
    embedding_backend: BackendOpt = None,
    wait: Annotated[
        bool, typer.Option(help="Follow it until the new model serves (--no-wait: start it).")
    ] = True,
    target: Target = RETRIEVER_TARGET,
) -> None:
    """Re-encode a collection with another embedding model. Searches and writes continue on the
    old model meanwhile; the collection swaps to the new one in one step when it is done."""
    with client_errors(), RetrieverClient(target, options=connection(600.0)) as client:
        status = client.reindex(collection, embedding_model, embedding_backend or "")
        if wait:
            status = _follow_reindex(client, collection, status)
    if status.error:
        fail(f"{collection}: reindex with {embedding_model} failed: {status.error}")
    if status.running:
        console.print(
            f"{collection}: reindexing with {status.embedding_model} "
            f"({status.embedding_backend}); realm stats shows its progress"
        )
        return
    console.print(
        f"{collection}: now served by {status.embedding_model} ({status.embedding_backend}), "
        f"{status.passages_total:,} passages re-encoded"
    )


def _follow_reindex(
    client: RetrieverClient, collection: str, status: ReindexStatus
) -> ReindexStatus:
    with progress_bar(f"re-encoding with {status.embedding_model}") as progress:
        task = progress.add_task("re-encoding", total=None)
        while status.running:
            time.sleep(REINDEX_POLL_SECONDS)
            (stats,) = client.stats(collection)
            if stats.reindex is None:  # the server restarted: the reindex is gone with it
                fail(
                    f"{collection}: the server restarted during the reindex; it still serves "
                    f"{stats.embedding_model}: run realm reindex again"
                )
            status = stats.reindex
            progress.update(task, completed=status.passages_done, total=status.passages_total)
    return status


def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: CollectionOpt,
    mode: ModeOpt = "hybrid",
    k: Annotated[int, typer.Option("-k", help="Passages to return.")] = 10,
    as_json: JsonOpt = False,
    target: Target = RETRIEVER_TARGET,
) -> None:
    """Search a collection and print the best passages."""
    with client_errors(), RetrieverClient(target, options=connection(30.0)) as client:
        hits = client.search(collection, query, k=k, mode=search_mode(mode))
    if as_json:
        print_json(hits_json(hits))
        return
    console.print(hits_table(f"{collection}: {query}", hits))
