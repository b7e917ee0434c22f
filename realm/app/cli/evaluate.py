"""``realm eval retrieval | qa``: quality measured through the services, as users see it."""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from realm.app.cli.data import NewCollection, index_missing
from realm.app.cli.output import console, fail, figures_table, groups_table, progress_bar
from realm.app.cli.shared import (
    TASKS,
    BackendOpt,
    CollectionOpt,
    GeneratorTarget,
    GroundingOpt,
    LanguageOpt,
    ModelOpt,
    ModeOpt,
    StyleOpt,
    Target,
    answer_options,
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
    language: LanguageOpt = None,
    embedding_model: ModelOpt = None,
    embedding_backend: BackendOpt = None,
    dense_weight: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Hybrid's dense weight; default: the collection's language's."
        ),
    ] = None,
) -> None:
    """nDCG@10, Recall@100 and MRR@10 on qrels/test.tsv; indexes what the collection lacks
    first (so an interrupted run resumes where it stopped)."""
    from realm.app.evaluation import evaluate_retrieval

    chosen = search_mode(mode)
    with client_errors(), RetrieverClient(target, options=connection(30.0)) as client:
        documents = [d for d in read_documents(beir / "corpus.jsonl") if isinstance(d, Document)]
        wanted = NewCollection(language, embedding_model, embedding_backend)
        index_missing(client, collection, documents, wanted)
        metrics = evaluate_retrieval(client, collection, beir, chosen, dense_weight)
    weight = "" if dense_weight is None else f" {dense_weight}"
    title = f"{beir.name} / {collection} / {mode}{weight}"
    console.print(figures_table(title, metrics, ("ndcg@10", "recall@100", "mrr@10"), "queries"))
    _write(json_out, metrics)


@eval_app.command("qa")
def eval_qa(
    questions: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            help='JSONL: {"id","question","answers"}, optionally "family" and "gold_doc_id".',
        ),
    ],
    collection: CollectionOpt,
    target: GeneratorTarget = GENERATOR_TARGET,
    k: Annotated[
        int, typer.Option("-k", "--k", help="Passages to retrieve; 0 = server default.")
    ] = 0,
    mode: ModeOpt = "hybrid",
    task: Annotated[str, typer.Option(help="answer, summarize or extract.")] = "answer",
    grounding: GroundingOpt = "strict",
    style: StyleOpt = "short",
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Questions in flight.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    json_out: JsonOut = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write each question's answer, sources, citations and scores (JSONL)."),
    ] = None,
) -> None:
    """Exact match, token F1, contains, gold document retrieved, citation precision and support
    over a question set (overall and per family), asked concurrently."""
    from realm.app.qa_evaluation import METRICS, evaluate_qa, read_questions, summarize

    if task not in TASKS:
        fail(f"--task {task!r} is unknown; use {', '.join(TASKS)}", code=2)
    chosen_grounding, chosen_style = answer_options(grounding, style)
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
        graded = evaluate_qa(
            client,
            collection,
            items,
            concurrency,
            lambda: progress.advance(bar),
            k=k,
            mode=search_mode(mode),
            task=TASKS[task],
            max_new_tokens=max_new_tokens,
            grounding=chosen_grounding,
            style=chosen_style,
        )
    summary = summarize(graded)
    console.print(groups_table(f"{questions.name} / {collection}", summary, METRICS))
    if out is not None:
        lines = (json.dumps(g.record(), ensure_ascii=False) for g in graded)
        out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    overall = summary.pop("all")
    _write(json_out, {**overall, "families": summary})


def _write(path: Path | None, figures: Mapping[str, object]) -> None:
    if path is not None:
        path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
