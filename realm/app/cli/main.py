"""``realm``: run the services and use them from a shell.

Client subcommands take ``--target`` (or ``REALM_RETRIEVER`` / ``REALM_GENERATOR``); server
subcommands take their settings as flags or ``REALM_*`` environment variables. Errors print one
line and exit non-zero.
"""

import asyncio
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from realm import logs
from realm.app.cli.output import console, fail, print_json
from realm.app.corpus import Refused, read_documents
from realm.app.supervisor import free_port
from realm.channels import ConnectionOptions, check_token_transport
from realm.client import (
    Answer,
    GeneratorClient,
    IngestInterrupted,
    NotFound,
    RealmClientError,
    RetrieverClient,
)
from realm.client.generator import Task, generate_request
from realm.client.retriever import Document, Mode, UpsertSummary

app = typer.Typer(help="ReaLM: retrieval-augmented generation over gRPC.", no_args_is_help=True)
serve_app = typer.Typer(help="Run a service.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure quality.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
app.add_typer(eval_app, name="eval")

Target = Annotated[
    str, typer.Option("--target", envvar="REALM_RETRIEVER", help="Retriever address HOST:PORT.")
]
GeneratorTarget = Annotated[
    str, typer.Option("--target", envvar="REALM_GENERATOR", help="Generator address HOST:PORT.")
]
# Options both servers take.
TlsCertOpt = Annotated[
    Path | None, typer.Option(envvar="REALM_TLS_CERT", help="PEM certificate chain (TLS).")
]
TlsKeyOpt = Annotated[
    Path | None, typer.Option(envvar="REALM_TLS_KEY", help="PEM private key (TLS).")
]
TlsClientCaOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="REALM_TLS_CLIENT_CA",
        help="PEM CA bundle: require client certificates signed by it (mutual TLS).",
    ),
]
AuthTokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="REALM_AUTH_TOKEN_FILE",
        help="File holding the token every call must carry as 'authorization: Bearer TOKEN' "
        "(or set REALM_AUTH_TOKEN; never a flag, which 'ps' would show).",
    ),
]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]
ModeOpt = Annotated[str, typer.Option("--mode", help="bm25, dense or hybrid.")]


_MODES: dict[str, Mode] = {"bm25": "bm25", "dense": "dense", "hybrid": "hybrid"}


def _mode(value: str) -> Mode:
    mode = _MODES.get(value)
    if mode is None:
        fail(f"--mode {value!r} is unknown; use bm25, dense or hybrid", code=2)
    return mode


def _secret(variable: str, file_variable: str, file: Path | None = None) -> str | None:
    """A secret from a file (the path given, or ``file_variable``) or from ``variable``: never
    from a flag, where other users of the machine would see it in ``ps``."""
    path = file or (Path(os.environ[file_variable]) if os.environ.get(file_variable) else None)
    if path is None:
        return os.environ.get(variable) or None
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError as error:
        return fail(f"cannot read the secret in {path}: {error.strerror}", code=2)


def _pem(variable: str) -> bytes | None:
    path = os.environ.get(variable)
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        return fail(f"{variable}: cannot read {path}: {error.strerror}", code=2)


def _plaintext_token_allowed() -> bool:
    return os.environ.get("REALM_ALLOW_PLAINTEXT_TOKEN", "") in {"1", "true", "yes"}


def _connection(timeout: float | None) -> ConnectionOptions:
    """Client connection settings from the environment, so scripts and people set them once:
    ``REALM_TLS_CA`` (PEM to verify servers), ``REALM_TLS_CLIENT_CERT`` / ``REALM_TLS_CLIENT_KEY``
    (mutual TLS), ``REALM_TOKEN`` or ``REALM_TOKEN_FILE``, ``REALM_ALLOW_PLAINTEXT_TOKEN``."""
    ca = _pem("REALM_TLS_CA")
    try:
        return ConnectionOptions(
            timeout=timeout,
            generate_timeout=timeout,
            tls=ca is not None,
            tls_root_certificate=ca,
            tls_client_certificate=_pem("REALM_TLS_CLIENT_CERT"),
            tls_client_key=_pem("REALM_TLS_CLIENT_KEY"),
            bearer_token=_secret("REALM_TOKEN", "REALM_TOKEN_FILE"),
            allow_plaintext_token=_plaintext_token_allowed(),
        )
    except ValueError as error:
        return fail(str(error), code=2)


@contextmanager
def _client_errors() -> Iterator[None]:
    try:
        yield
    except RealmClientError as error:
        fail(f"{error.code.name}: {error}")


@serve_app.command("retriever")
def serve_retriever(
    data_dir: Annotated[Path, typer.Option(envvar="REALM_DATA_DIR", help="Where indexes live.")],
    host: Annotated[str, typer.Option(envvar="REALM_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="REALM_PORT", help="0 picks a free port.")] = 50051,
    reflection: Annotated[bool, typer.Option(envvar="REALM_REFLECTION")] = False,
    max_k: Annotated[int, typer.Option(envvar="REALM_MAX_K")] = 1000,
    max_query_chars: Annotated[int, typer.Option(envvar="REALM_MAX_QUERY_CHARS")] = 4096,
    max_document_chars: Annotated[int, typer.Option(envvar="REALM_MAX_DOCUMENT_CHARS")] = 1_000_000,
    max_message_bytes: Annotated[int, typer.Option(envvar="REALM_MAX_MESSAGE_BYTES")] = 64
    * 1024
    * 1024,
    max_concurrent_rpcs: Annotated[int, typer.Option(envvar="REALM_MAX_CONCURRENT_RPCS")] = 256,
    grace_seconds: Annotated[float, typer.Option(envvar="REALM_GRACE_SECONDS")] = 10.0,
    max_concurrent_upserts: Annotated[
        int, typer.Option(envvar="REALM_MAX_CONCURRENT_UPSERTS", help="Upsert streams at once.")
    ] = 4,
    upsert_idle_seconds: Annotated[
        float,
        typer.Option(
            envvar="REALM_UPSERT_IDLE_SECONDS", help="An Upsert stream silent this long fails."
        ),
    ] = 60.0,
    upsert_max_seconds: Annotated[
        float,
        typer.Option(envvar="REALM_UPSERT_MAX_SECONDS", help="Longest an Upsert stream may last."),
    ] = 600.0,
    compact_threshold: Annotated[
        int,
        typer.Option(
            envvar="REALM_COMPACT_THRESHOLD",
            help="Tail passages + tombstones that start a background generation build.",
        ),
    ] = 20_000,
    workers: Annotated[
        int,
        typer.Option(
            envvar="REALM_WORKERS",
            help="Processes answering on the port: 1 writer + N-1 read workers (one per core).",
        ),
    ] = 1,
    embedding_models: Annotated[
        str,
        typer.Option(
            envvar="REALM_EMBEDDING_MODELS",
            help="Comma-separated sentence-transformers names or directories that clients may "
            "choose for a collection (the packaged default always may); loaded at start.",
        ),
    ] = "",
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_client_ca: TlsClientCaOpt = None,
    auth_token_file: AuthTokenFileOpt = None,
    log_level: Annotated[str, typer.Option(envvar="REALM_LOG_LEVEL")] = "INFO",
) -> None:
    """Serve the retriever until SIGTERM/SIGINT."""
    from realm.files import DirectoryLocked
    from realm.retriever.server import RetrieverConfig, serve
    from realm.retriever.settings import Limits
    from realm.server import ServerOptions

    logs.configure(log_level)
    try:
        config = RetrieverConfig(
            data_dir=data_dir,
            server=ServerOptions(
                host=host,
                port=port,
                reflection=reflection,
                max_message_bytes=max_message_bytes,
                max_concurrent_rpcs=max_concurrent_rpcs,
                grace_seconds=grace_seconds,
                tls_cert_file=tls_cert,
                tls_key_file=tls_key,
                tls_client_ca_file=tls_client_ca,
                auth_token=_secret("REALM_AUTH_TOKEN", "REALM_AUTH_TOKEN_FILE", auth_token_file),
            ),
            limits=Limits(
                max_k=max_k,
                max_query_chars=max_query_chars,
                max_document_chars=max_document_chars,
                max_concurrent_upserts=max_concurrent_upserts,
                stream_idle_s=upsert_idle_seconds,
                max_stream_s=upsert_max_seconds,
                max_response_bytes=max_message_bytes,
            ),
            compact_threshold=compact_threshold,
            workers=workers,
            embedding_models=tuple(m.strip() for m in embedding_models.split(",") if m.strip()),
        )
    except ValueError as error:
        fail(str(error), code=2)
    try:
        asyncio.run(serve(config))
    except DirectoryLocked as error:
        fail(str(error), code=1)


@serve_app.command("generator")
def serve_generator(
    retriever: Annotated[
        str, typer.Option(envvar="REALM_RETRIEVER", help="Retriever address HOST:PORT.")
    ],
    model: Annotated[
        str, typer.Option(envvar="REALM_MODEL", help="Hugging Face name, local path or .gguf.")
    ] = "HuggingFaceTB/SmolLM2-135M-Instruct",
    device: Annotated[str, typer.Option(envvar="REALM_DEVICE", help="auto, cpu, cuda:0…")] = "auto",
    host: Annotated[str, typer.Option(envvar="REALM_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="REALM_PORT", help="0 picks a free port.")] = 50052,
    context_tokens: Annotated[int, typer.Option(envvar="REALM_CONTEXT_TOKENS")] = 2048,
    max_batch_size: Annotated[int, typer.Option(envvar="REALM_MAX_BATCH_SIZE")] = 8,
    pack_cpu_weights: Annotated[
        bool, typer.Option(envvar="REALM_PACK_CPU_WEIGHTS", help="oneDNN-packed CPU weights.")
    ] = True,
    draft_tokens: Annotated[
        int,
        typer.Option(
            envvar="REALM_DRAFT_TOKENS", help="Tokens guessed from the prompt per step; 0: off."
        ),
    ] = 4,
    max_pending_requests: Annotated[int, typer.Option(envvar="REALM_MAX_PENDING_REQUESTS")] = 64,
    max_new_tokens: Annotated[int, typer.Option(envvar="REALM_MAX_NEW_TOKENS")] = 1024,
    retrieval_timeout: Annotated[float, typer.Option(envvar="REALM_RETRIEVAL_TIMEOUT")] = 10.0,
    cache_dir: Annotated[
        Path | None, typer.Option(envvar="REALM_CACHE_DIR", help="Converted-model cache.")
    ] = None,
    reflection: Annotated[bool, typer.Option(envvar="REALM_REFLECTION")] = False,
    grace_seconds: Annotated[float, typer.Option(envvar="REALM_GRACE_SECONDS")] = 30.0,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_client_ca: TlsClientCaOpt = None,
    auth_token_file: AuthTokenFileOpt = None,
    retriever_tls_ca: Annotated[
        Path | None,
        typer.Option(envvar="REALM_RETRIEVER_TLS_CA", help="PEM file to verify the retriever."),
    ] = None,
    retriever_tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="REALM_RETRIEVER_TLS_CERT", help="Client certificate for a mutual-TLS retriever."
        ),
    ] = None,
    retriever_tls_key: Annotated[
        Path | None,
        typer.Option(envvar="REALM_RETRIEVER_TLS_KEY", help="Key of --retriever-tls-cert."),
    ] = None,
    retriever_token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="REALM_RETRIEVER_TOKEN_FILE",
            help="File holding the retriever's token (or set REALM_RETRIEVER_TOKEN).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="REALM_LOG_LEVEL")] = "INFO",
) -> None:
    """Serve the generator until SIGTERM/SIGINT."""
    from realm.generator.server import serve
    from realm.generator.settings import (
        GeneratorConfig,
        GeneratorLimits,
        ModelSettings,
        default_cache_dir,
    )
    from realm.server import ServerOptions

    logs.configure(log_level)
    try:
        config = GeneratorConfig(
            retriever_target=retriever,
            server=ServerOptions(
                host=host,
                port=port,
                reflection=reflection,
                grace_seconds=grace_seconds,
                tls_cert_file=tls_cert,
                tls_key_file=tls_key,
                tls_client_ca_file=tls_client_ca,
                auth_token=_secret("REALM_AUTH_TOKEN", "REALM_AUTH_TOKEN_FILE", auth_token_file),
            ),
            model=ModelSettings(
                name_or_path=model,
                device=device,
                context_tokens=context_tokens,
                cache_dir=cache_dir or default_cache_dir(),
                max_batch_size=max_batch_size,
                pack_cpu_weights=pack_cpu_weights,
                draft_tokens=draft_tokens,
            ),
            limits=GeneratorLimits(
                max_new_tokens=max_new_tokens,
                default_max_new_tokens=min(256, max_new_tokens),
                max_pending_requests=max_pending_requests,
            ),
            retrieval_timeout_s=retrieval_timeout,
            retriever_connection=ConnectionOptions(
                tls=retriever_tls_ca is not None,
                tls_root_certificate=retriever_tls_ca.read_bytes() if retriever_tls_ca else None,
                tls_client_certificate=retriever_tls_cert.read_bytes()
                if retriever_tls_cert
                else None,
                tls_client_key=retriever_tls_key.read_bytes() if retriever_tls_key else None,
                bearer_token=_secret(
                    "REALM_RETRIEVER_TOKEN", "REALM_RETRIEVER_TOKEN_FILE", retriever_token_file
                ),
                allow_plaintext_token=_plaintext_token_allowed(),
            ),
        )
        check_token_transport(config.retriever_target, config.retriever_connection)
    except (ValueError, OSError) as error:
        fail(str(error), code=2)
    asyncio.run(serve(config))


_TASK_NAMES: dict[str, Task] = {"answer": "answer", "summarize": "summarize", "extract": "extract"}


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question (or topic, or subject).")],
    collection: CollectionOpt,
    target: GeneratorTarget = "localhost:50052",
    mode: ModeOpt = "hybrid",
    k: Annotated[int, typer.Option("-k", help="Passages to retrieve; 0 = server default.")] = 0,
    task: Annotated[str, typer.Option(help="answer, summarize or extract.")] = "answer",
    field: Annotated[
        list[str] | None, typer.Option("--field", help="A field to extract (repeat).")
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens to generate at most.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    allow_no_context: Annotated[
        bool, typer.Option(help="Answer without passages if retrieval fails.")
    ] = False,
    stream: Annotated[bool, typer.Option(help="Print the answer as it is generated.")] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the final response as JSON.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 120.0,
) -> None:
    """Ask the generator; prints the answer (streamed), then its numbered sources."""
    if task not in _TASK_NAMES:
        fail(f"--task {task!r} is unknown; use answer, summarize or extract", code=2)
    request = generate_request(
        question,
        collection,
        k=k,
        mode=_mode(mode),
        task=_TASK_NAMES[task],
        fields=field or [],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        allow_no_context=allow_no_context,
    )
    with _client_errors(), GeneratorClient(target, options=_connection(timeout)) as client:
        if as_json or not stream:
            answer = client.ask(request)
            if as_json:
                print_json(answer_json(answer))
                return
            console.print(answer.text, highlight=False, markup=False)
        else:
            answer = _print_stream(client.ask_stream(request))
    show_sources(answer)


def _print_stream(events: Iterator[str | Answer]) -> Answer:
    for event in events:
        if not isinstance(event, str):
            console.print()
            return event
        console.print(event, end="", highlight=False, markup=False, soft_wrap=True)
    return fail("the stream ended without a final answer")


def answer_json(answer: Answer) -> dict[str, object]:
    """The ``--json`` shape: stable keys for scripts."""
    payload: dict[str, object] = {
        "answer": answer.text,
        "sources": [
            {
                "citation": s.citation,
                "doc_id": s.doc_id,
                "title": s.title,
                "score": s.score,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "cited": s.cited,
            }
            for s in answer.sources
        ],
        "citations": [
            {"citation": c.citation, "start": c.start, "end": c.end, "origin": c.origin}
            for c in answer.citations
        ],
        "context_used": answer.context_used,
        "no_context_reason": answer.no_context_reason,
        "finish_reason": answer.finish_reason,
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
        },
        "timings": answer.timings_ms,
        "model": answer.model,
    }
    if answer.fields:
        payload["fields"] = answer.extracted
    return payload


def show_sources(answer: Answer, limit: int | None = None) -> None:
    """The numbered sources under an answer; cited ones first and marked."""
    if not answer.context_used:
        console.print(f"[yellow]answered without sources:[/] {answer.no_context_reason}")
        return
    for field_ in answer.fields:
        where = f" [{field_.citation}]" if field_.citation else ""
        console.print(f"  {field_.name}: {field_.value if field_.found else '—'}{where}")
    console.print("[bold]Sources[/]")
    ordered = sorted(answer.sources, key=lambda s: (not s.cited, s.citation))
    for source in ordered[:limit]:
        mark = "[green]cited[/]" if source.cited else "[dim]not cited[/]"
        snippet = source.text if len(source.text) <= 160 else source.text[:157] + "..."
        console.print(
            f"  [{source.citation}] [cyan]{source.title or source.doc_id}[/] {mark} "
            f"({source.score:.3f}) {snippet}",
            highlight=False,
        )


@app.command()
def ingest(
    path: Annotated[
        Path, typer.Argument(exists=True, help="BEIR corpus.jsonl, JSONL, or .txt/.md files.")
    ],
    collection: CollectionOpt,
    target: Target = "localhost:50051",
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
    with _client_errors(), RetrieverClient(target, options=_connection(30.0)) as client:
        _ensure_collection(client, collection)
        try:
            summary = _upload(client, collection, documents[skip:], batch_size)
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


def _ensure_collection(client: RetrieverClient, name: str) -> bool:
    """Creates ``name`` with default settings when missing; returns True if it was created."""
    if any(c.name == name for c in client.list_collections()):
        return False
    client.create_collection(name)
    return True


def _upload(
    client: RetrieverClient, collection: str, documents: list[Document], batch_size: int
) -> UpsertSummary:
    """Sends ``documents`` in acknowledged batches, showing how many are durable."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("indexing", total=len(documents))
        return client.ingest(
            collection,
            documents,
            batch_size=batch_size,
            progress=lambda acknowledged: progress.advance(task, acknowledged),
        )


@app.command()
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


@app.command()
def stats(
    collection: Annotated[
        str, typer.Option("--collection", "-c", help="One collection; default all.")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    target: Target = "localhost:50051",
) -> None:
    """Show each collection's size, generation, tail and write-ahead log."""
    with _client_errors(), RetrieverClient(target, options=_connection(30.0)) as client:
        collections = client.stats(collection)
    fields = (
        "documents",
        "passages",
        "generation",
        "tail_passages",
        "tombstones",
        "wal_bytes",
        "last_sequence",
        "index_bytes",
    )
    rows = {c.name: {f: int(getattr(c, f)) for f in fields} for c in collections}
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"collections on {target}")
    for column in ("collection", *fields):
        table.add_column(column.replace("_", " "), justify="right")
    for name, values in rows.items():
        table.add_row(name, *(f"{v:,}" for v in values.values()))
    console.print(table)


@app.command()
def compact(collection: CollectionOpt, target: Target = "localhost:50051") -> None:
    """Fold a collection's recent writes into a new index generation now."""
    with _client_errors(), RetrieverClient(target, options=_connection(30.0)) as client:
        generation = client.compact(collection)
    console.print(f"{collection}: generation {generation} serves every write so far")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: CollectionOpt,
    mode: ModeOpt = "hybrid",
    k: Annotated[int, typer.Option("-k", help="Passages to return.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    target: Target = "localhost:50051",
) -> None:
    """Search a collection and print the best passages."""
    with _client_errors(), RetrieverClient(target, options=_connection(30.0)) as client:
        hits = client.search(collection, query, k=k, mode=_mode(mode))
    if as_json:
        print_json(
            {
                "results": [
                    {
                        "doc_id": h.doc_id,
                        "passage_id": h.passage_id,
                        "score": h.score,
                        "text": h.text,
                        "title": h.title,
                        "start": h.start,
                        "end": h.end,
                        "metadata": h.metadata,
                    }
                    for h in hits
                ]
            }
        )
        return
    table = Table(title=f"{collection}: {query}", show_lines=True)
    for column in ("#", "score", "document", "passage"):
        table.add_column(column, overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        label = f"{hit.doc_id}\n{hit.title}" if hit.title else hit.doc_id
        snippet = hit.text if len(hit.text) <= 300 else hit.text[:297] + "..."
        table.add_row(str(rank), f"{hit.score:.4f}", label, snippet)
    console.print(table)


@eval_app.command("retrieval")
def eval_retrieval(
    beir: Annotated[Path, typer.Option(exists=True, file_okay=False, help="BEIR data set folder.")],
    collection: CollectionOpt,
    mode: ModeOpt = "hybrid",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
    target: Target = "localhost:50051",
) -> None:
    """nDCG@10, Recall@100 and MRR@10 on qrels/test.tsv; indexes what the collection lacks
    first (so an interrupted run resumes where it stopped)."""
    from realm.app.evaluation import evaluate_retrieval

    search_mode = _mode(mode)
    with _client_errors(), RetrieverClient(target, options=_connection(30.0)) as client:
        documents = [d for d in read_documents(beir / "corpus.jsonl") if isinstance(d, Document)]
        _index_missing(client, collection, documents)
        metrics = evaluate_retrieval(client, collection, beir, search_mode)
    table = Table(title=f"{beir.name} / {collection} / {mode}")
    for name in ("ndcg@10", "recall@100", "mrr@10", "queries"):
        table.add_column(name)
    table.add_row(
        *(f"{metrics[n]:.4f}" for n in ("ndcg@10", "recall@100", "mrr@10")),
        str(int(metrics["queries"])),
    )
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


@eval_app.command("qa")
def eval_qa(
    questions: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help='JSONL: {"id","question","answers"}.')
    ],
    collection: CollectionOpt,
    target: GeneratorTarget = "localhost:50052",
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Questions in flight.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the scores here.")] = None,
) -> None:
    """Exact match, token F1 and contains over a question set, asked concurrently."""
    from realm.app.qa_evaluation import evaluate_qa, read_questions

    try:
        items = read_questions(questions)
    except ValueError as error:
        fail(str(error), code=2)
    with (
        _client_errors(),
        GeneratorClient(target, options=_connection(600.0)) as client,
        Progress(
            TextColumn("asking"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
        ) as progress,
    ):
        bar = progress.add_task("asking", total=len(items))
        scores = evaluate_qa(
            client, collection, items, concurrency, max_new_tokens, lambda: progress.advance(bar)
        )
    table = Table(title=f"{questions.name} / {collection}")
    for name in ("em", "f1", "contains", "questions"):
        table.add_column(name)
    table.add_row(
        *(f"{scores[n]:.4f}" for n in ("em", "f1", "contains")), str(int(scores["questions"]))
    )
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")


@app.command()
def demo(
    corpus: Annotated[
        Path | None, typer.Option(exists=True, help="Your own files instead.")
    ] = None,
    limit: Annotated[int, typer.Option(min=0, help="Wikipedia summaries to index; 0 = all.")] = 500,
    data_dir: Annotated[Path, typer.Option(envvar="REALM_DEMO_DIR")] = Path(".realm/demo"),
    collection: CollectionOpt = "wiki",
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Answer length in tokens.")] = 80,
    wait: Annotated[bool, typer.Option(help="Keep serving until Ctrl-C.")] = True,
) -> None:
    """Start a retriever and a generator, index the embedded corpus (or --corpus), answer the
    sample questions with sources, keep serving."""
    from realm.app import demo as demo_steps

    try:
        documents = (
            demo_steps.demo_summaries(limit)
            if corpus is None
            else [d for d in read_documents(corpus) if isinstance(d, Document)]
        )
    except (FileNotFoundError, ValueError) as error:
        fail(str(error), code=2)
    missing = demo_steps.generator_model_missing()
    if missing:
        fail(missing, code=2)
    retriever = demo_steps.start_retriever(
        data_dir / demo_steps.index_folder(), free_port(), data_dir / "retriever.log"
    )
    generator = demo_steps.start_generator(
        retriever.target, free_port(), data_dir / "generator.log"
    )
    try:
        with console.status("starting the retriever and the generator (loading their models)"):
            retriever.wait_serving()
            generator.wait_serving()
        with _client_errors(), RetrieverClient(retriever.target, timeout=60) as client:
            _index_missing(client, collection, documents)
        if corpus is None:
            with _client_errors(), GeneratorClient(generator.target, timeout=600) as answers:
                _answer_samples(
                    answers, collection, list(demo_steps.SAMPLE_QUESTIONS), max_new_tokens
                )
        console.print(
            f"\nRetriever: [bold]{retriever.target}[/]  generator: [bold]{generator.target}[/] "
            f"(logs in {data_dir}). Ask your own:\n"
            f'  realm ask "your question" --collection {collection} --target {generator.target}\n'
            f"  realm chat --collection {collection} --target {generator.target}"
        )
        if wait:
            console.print("Press Ctrl-C to stop.")
            demo_steps.wait_for_interrupt()
    finally:
        codes = {"generator": generator.stop(), "retriever": retriever.stop()}
    for service, code in codes.items():
        if code != 0:
            fail(f"the {service} exited with code {code}; see {data_dir / (service + '.log')}")


def _answer_samples(
    client: GeneratorClient, collection: str, questions: list[str], max_new_tokens: int
) -> None:
    """Asks every question at once (the generator batches them) and prints them in order."""
    from concurrent.futures import ThreadPoolExecutor

    def ask_one(question: str) -> Answer:
        return client.ask(
            generate_request(question, collection, k=3, max_new_tokens=max_new_tokens)
        )

    with (
        console.status(f"asking {len(questions)} sample questions together"),
        ThreadPoolExecutor(max_workers=len(questions)) as pool,
    ):
        answers = list(pool.map(ask_one, questions))
    for question, answer in zip(questions, answers, strict=True):
        console.print(f"\n[bold]Q: {question}[/]")
        console.print(answer.text.strip(), highlight=False, markup=False)
        show_sources(answer, limit=3)


@app.command()
def chat(
    collection: CollectionOpt,
    target: GeneratorTarget = "localhost:50052",
    k: Annotated[int, typer.Option("-k", help="Passages to retrieve; 0 = server default.")] = 0,
) -> None:
    """An interactive prompt: each line is a question, answered as it streams. Ctrl-D quits."""
    with GeneratorClient(target, options=_connection(600.0)) as client:
        while True:
            try:
                question = console.input("[bold]? [/]")
            except (EOFError, KeyboardInterrupt):
                console.print()
                return
            if not question.strip():
                continue
            with _client_errors():
                show_sources(
                    _print_stream(client.ask_stream(generate_request(question, collection, k=k)))
                )


def _index_missing(client: RetrieverClient, collection: str, documents: list[Document]) -> None:
    """Indexes what the persisted collection lacks, so a second run starts in seconds."""
    _ensure_collection(client, collection)
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
        summary = _upload(client, collection, missing, 256)
        client.compact(collection)  # later starts load one generation, nothing to replay
        console.print(
            f"indexed {summary.inserted + summary.replaced} documents ({summary.passages} passages)"
        )
    else:
        console.print(f"index found: {indexed} documents in {collection!r}")


if __name__ == "__main__":
    app()
