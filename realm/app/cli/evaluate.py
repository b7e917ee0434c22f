"""``realm eval retrieval | qa``: quality measured through the services, as users see it."""

import json
from pathlib import Path
from typing import Annotated

import typer

from realm.app.cli.data import index_missing
from realm.app.cli.output import console, fail, figures_table, progress_bar
from realm.app.cli.shared import (
    CollectionOpt,
    GeneratorTarget,
    ModeOpt,
    Target,
    client_errors,
    connection,
    search_mode,
)
from realm.app.corpus import read_documents
from realm.client import Document, GeneratorClient, RetrieverClient
from realm.ports import GENERATOR_TARGET, RETRIEVER_TARGET

eval_app = typer.Typer(help="Measure quality.", no_args_is_help=True)
JsonOut = Annotated[Path | None, typer.Option("--json", help="Write the figures here.")]


@eval_app.command("retrieval")
def eval_retrieval(
    beir: Annotated[Path, typer.Option(exists=True, file_okay=False, help="BEIR data set folder.")],
    collection: CollectionOpt,
    mode: ModeOpt = "hybrid",
    json_out: JsonOut = None,
    target: Target = RETRIEVER_TARGET,
) -> None:
    """nDCG@10, Recall@100 and MRR@10 on qrels/test.tsv; indexes what the collection lacks
    first (so an interrupted run resumes where it stopped)."""
    from realm.app.evaluation import evaluate_retrieval

    chosen = search_mode(mode)
    with client_errors(), RetrieverClient(target, options=connection(30.0)) as client:
        documents = [d for d in read_documents(beir / "corpus.jsonl") if isinstance(d, Document)]
        index_missing(client, collection, documents)
        metrics = evaluate_retrieval(client, collection, beir, chosen)
    title = f"{beir.name} / {collection} / {mode}"
    console.print(figures_table(title, metrics, ("ndcg@10", "recall@100", "mrr@10"), "queries"))
    _write(json_out, metrics)


@eval_app.command("qa")
def eval_qa(
    questions: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help='JSONL: {"id","question","answers"}.')
    ],
    collection: CollectionOpt,
    target: GeneratorTarget = GENERATOR_TARGET,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Questions in flight.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    json_out: JsonOut = None,
) -> None:
    """Exact match, token F1 and contains over a question set, asked concurrently."""
    from realm.app.qa_evaluation import evaluate_qa, read_questions

    try:
        items = read_questions(questions)
    except ValueError as error:
        fail(str(error), code=2)
    with (
        client_errors(),
        GeneratorClient(target, options=connection(600.0)) as client,
        progress_bar("asking") as progress,
    ):
        bar = progress.add_task("asking", total=len(items))
        scores = evaluate_qa(
            client, collection, items, concurrency, max_new_tokens, lambda: progress.advance(bar)
        )
    title = f"{questions.name} / {collection}"
    console.print(figures_table(title, scores, ("em", "f1", "contains"), "questions"))
    _write(json_out, scores)


def _write(path: Path | None, figures: dict[str, float]) -> None:
    if path is not None:
        path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
