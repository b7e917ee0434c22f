"""``realm``: run the services and use them from a shell.

Client subcommands take ``--target`` (or ``REALM_RETRIEVER``); server subcommands take their
settings as flags or ``REALM_*`` environment variables. Errors print one line and exit non-zero.
"""

import asyncio
import json
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

from client import NotFound, RealmClientError, RetrieverClient
from client.retriever import Document, Mode, UpsertSummary
from realm import logs
from realm.cli.output import console, fail, print_json
from realm.corpus import Refused, read_documents
from realm.supervisor import free_port

app = typer.Typer(help="ReaLM: retrieval-augmented generation over gRPC.", no_args_is_help=True)
serve_app = typer.Typer(help="Run a service.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure quality.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
app.add_typer(eval_app, name="eval")

Target = Annotated[
    str, typer.Option("--target", envvar="REALM_RETRIEVER", help="Retriever address HOST:PORT.")
]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]
ModeOpt = Annotated[str, typer.Option("--mode", help="bm25, dense or hybrid.")]


_MODES: dict[str, Mode] = {"bm25": "bm25", "dense": "dense", "hybrid": "hybrid"}


def _mode(value: str) -> Mode:
    mode = _MODES.get(value)
    if mode is None:
        fail(f"--mode {value!r} is unknown; use bm25, dense or hybrid", code=2)
    return mode


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
    log_level: Annotated[str, typer.Option(envvar="REALM_LOG_LEVEL")] = "INFO",
) -> None:
    """Serve the retriever until SIGTERM/SIGINT."""
    from realm.server import ServerOptions
    from retriever_service.server import RetrieverConfig, serve
    from retriever_service.settings import Limits

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
            ),
            limits=Limits(
                max_k=max_k, max_query_chars=max_query_chars, max_document_chars=max_document_chars
            ),
        )
    except ValueError as error:
        fail(str(error), code=2)
    asyncio.run(serve(config))


@app.command()
def ingest(
    path: Annotated[
        Path, typer.Argument(exists=True, help="BEIR corpus.jsonl, JSONL, or .txt/.md files.")
    ],
    collection: CollectionOpt,
    target: Target = "localhost:50051",
    batch_size: Annotated[int, typer.Option(min=1, max=2048)] = 256,
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
    with _client_errors(), RetrieverClient(target) as client:
        _ensure_collection(client, collection)
        summary = _upload(client, collection, documents, batch_size)
    console.print(
        f"{collection}: {summary.inserted} inserted, {summary.replaced} replaced, "
        f"{summary.passages} passages, generation {summary.generation}"
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
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("sending", total=len(documents))

        def advance(sent: int) -> None:
            progress.advance(task, sent)
            if progress.tasks[0].completed >= len(documents):
                progress.update(task, description="indexing (encoding passages)")

        return client.upsert(collection, documents, batch_size=batch_size, progress=advance)


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
    with _client_errors(), RetrieverClient(target) as client:
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
    """nDCG@10, Recall@100 and MRR@10 on qrels/test.tsv; fills an empty collection first."""
    from realm.evaluation import evaluate_retrieval

    search_mode = _mode(mode)
    with _client_errors(), RetrieverClient(target) as client:
        try:
            empty = client.stats(collection)[0].documents == 0
        except NotFound:
            client.create_collection(collection)
            empty = True
        if empty:
            documents = [
                d for d in read_documents(beir / "corpus.jsonl") if isinstance(d, Document)
            ]
            _upload(client, collection, documents, 256)
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


@app.command()
def demo(
    corpus: Annotated[
        Path | None, typer.Option(exists=True, help="Your own files instead.")
    ] = None,
    limit: Annotated[int, typer.Option(min=0, help="Wikipedia summaries to index; 0 = all.")] = 500,
    data_dir: Annotated[Path, typer.Option(envvar="REALM_DEMO_DIR")] = Path(".realm/demo"),
    port: Annotated[int, typer.Option(help="Retriever port; 0 picks a free one.")] = 0,
    collection: CollectionOpt = "wiki",
    wait: Annotated[bool, typer.Option(help="Keep serving until Ctrl-C.")] = True,
) -> None:
    """Start a retriever, index the embedded corpus (or --corpus), search it, keep serving."""
    from realm import demo as demo_steps

    try:
        documents = (
            demo_steps.wiki_summaries(limit)
            if corpus is None
            else [d for d in read_documents(corpus) if isinstance(d, Document)]
        )
    except (FileNotFoundError, ValueError) as error:
        fail(str(error), code=2)
    server = demo_steps.start_retriever(
        data_dir / "index", port or free_port(), data_dir / "retriever.log"
    )
    try:
        with console.status("starting the retriever (loading the embedding model)"):
            server.wait_serving()
        with _client_errors(), RetrieverClient(server.target, timeout=60) as client:
            _index_missing(client, collection, documents)
            if corpus is None:
                for question in demo_steps.SAMPLE_QUESTIONS:
                    _show_answers(client, collection, question)
        console.print(
            f"\nThe retriever serves [bold]{server.target}[/] (log: {data_dir / 'retriever.log'}). "
            f'Ask your own:\n  realm search "your question" --collection {collection} '
            f"--target {server.target}"
        )
        if wait:
            console.print("Press Ctrl-C to stop.")
            demo_steps.wait_for_interrupt()
    finally:
        code = server.stop()
    if code != 0:
        fail(f"the retriever exited with code {code}; see {data_dir / 'retriever.log'}")


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
        console.print(
            f"indexed {summary.inserted + summary.replaced} documents ({summary.passages} passages)"
        )
    else:
        console.print(f"index found: {indexed} documents in {collection!r}")


def _show_answers(client: RetrieverClient, collection: str, question: str) -> None:
    hits = client.search(collection, question, k=3)
    console.print(f"\n[bold]{question}[/]")
    for rank, hit in enumerate(hits, start=1):
        snippet = hit.text if len(hit.text) <= 160 else hit.text[:157] + "..."
        console.print(
            f"  [{rank}] [cyan]{hit.title or hit.doc_id}[/] ({hit.score:.3f}) {snippet}",
            highlight=False,
        )


if __name__ == "__main__":
    app()
