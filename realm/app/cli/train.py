"""``realm train``: adapt a collection's embedding model (``retriever``) or the generator's reader
(``generator``) to its documents."""

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from realm.app.cli.output import console, fail, progress_bar
from realm.app.cli.shared import CollectionOpt
from realm.app.training.corpus import CollectionPassages, TrainingInputError
from realm.app.training.examples import Triplet
from realm.app.training.reader_options import REFUSAL_SHARE, GeneratorOptions
from realm.app.training.retriever import (
    TrainingOptions,
    VersionBuilder,
    base_model,
    load_trainable,
    require_training_packages,
)
from realm.generator.settings import DEFAULT_MODEL as DEFAULT_GENERATOR
from realm.settings import default_cache_dir

train_app = typer.Typer(help="Fine-tune models on a collection.", no_args_is_help=True)
# Measured on Cranfield on 2 CPU cores (docs/training.md).
_DEFAULTS = TrainingOptions()


@train_app.command("retriever")
def train_retriever(
    collection: CollectionOpt,
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="REALM_DATA_DIR",
            file_okay=False,
            help="The retriever's data directory: the collection is read from it and the "
            "trained version is saved in it (models/<collection>-vN).",
        ),
    ],
    queries: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Labelled: BEIR queries.jsonl."),
    ] = None,
    qrels: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Labelled: BEIR qrels .tsv."),
    ] = None,
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic",
            help="No labels: the generator model writes a query per sampled passage; those "
            "whose passage BM25 finds again are trained on.",
        ),
    ] = False,
    synthetic_passages: Annotated[
        int, typer.Option(min=1, help="Passages sampled for --synthetic.")
    ] = 400,
    generator_model: Annotated[
        str, typer.Option(help="Writes the synthetic queries (name, path or .gguf).")
    ] = DEFAULT_GENERATOR,
    epochs: Annotated[float, typer.Option(help="Passes over the examples.")] = _DEFAULTS.epochs,
    batch_size: Annotated[
        int, typer.Option(help="Examples per step (in-batch negatives).")
    ] = _DEFAULTS.batch_size,
    learning_rate: Annotated[
        float, typer.Option(help="Peak learning rate.")
    ] = _DEFAULTS.learning_rate,
    max_seq_length: Annotated[
        int, typer.Option(help="Tokens per passage while training.")
    ] = _DEFAULTS.max_seq_length,
    merge_weight: Annotated[
        float,
        typer.Option(
            help="The fine-tuned weights' share of the saved model, the rest the base "
            "model's (WiSE-FT); 1 saves the fine-tuned model alone."
        ),
    ] = _DEFAULTS.merge_weight,
    seed: Annotated[int, typer.Option(help="Same seed, same examples and same model.")] = 0,
    checkpoint_steps: Annotated[
        int, typer.Option(min=1, help="Steps between checkpoints (what --resume continues from).")
    ] = _DEFAULTS.checkpoint_steps,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue this collection's interrupted training."),
    ] = False,
) -> None:
    """Fine-tune the collection's embedding model, with labelled queries (--queries and
    --qrels) or synthetic ones (--synthetic), into a new version served by name:
    ``realm ingest --embedding-model <version>`` makes a collection with it."""
    labels = (queries is not None) + (qrels is not None)
    if labels != (0 if synthetic else 2):
        fail("give either --queries and --qrels (labelled) or --synthetic (no labels)", code=2)
    try:
        options = TrainingOptions(
            epochs, batch_size, learning_rate, max_seq_length, seed, checkpoint_steps, merge_weight
        )
        require_training_packages()
        passages = CollectionPassages.read(data_dir, collection)
        model = load_trainable(base_model(data_dir, passages.settings))
        builder = VersionBuilder(data_dir, collection, resume)
    except TrainingInputError as error:
        fail(str(error), code=2)

    def make() -> tuple[list[Triplet], dict[str, Any]]:
        if queries is None or qrels is None:
            return _synthetic(passages, generator_model, synthetic_passages, seed)
        return _labelled(passages, queries, qrels, seed)

    try:
        triplets, about = builder.examples(make)
    except TrainingInputError as error:
        builder.discard()
        fail(str(error), code=2)
    console.print(
        f"training {builder.name} from {passages.settings.embedding_model} on "
        f"{len(triplets)} examples"
    )
    outcome = builder.train(model, triplets, options)
    version = builder.publish(
        {
            "collection": collection,
            "base_model": passages.settings.embedding_model,
            "examples": {"count": len(triplets), **about},
            "options": asdict(options),
            "training": outcome,
        }
    )
    console.print(
        f"[bold]{version.name}[/] saved in {version.directory} "
        f"({outcome['steps']} steps, loss {outcome['train_loss']}, {outcome['seconds']} s)\n"
        f"use it: realm reindex --collection {collection} --embedding-model {version.name} "
        f"(or realm ingest --collection NEW --embedding-model {version.name} ...)"
    )


def _labelled(
    passages: CollectionPassages, queries: Path, qrels: Path, seed: int
) -> tuple[list[Triplet], dict[str, Any]]:
    from realm.app.beir import read_qrels, read_queries
    from realm.app.training.examples import labelled_examples

    try:
        labels = read_queries(queries), read_qrels(qrels)
    except (ValueError, KeyError) as error:
        raise TrainingInputError(f"--queries/--qrels could not be read: {error}") from error
    labelled = labelled_examples(passages, *labels, seed)
    return labelled.triplets, {
        "method": "labelled",
        "queries_file": str(queries),
        "qrels_file": str(qrels),
        "queries": labelled.queries,
        "missing_documents": labelled.missing_documents,
    }


def _synthetic(
    passages: CollectionPassages, generator_model: str, limit: int, seed: int
) -> tuple[list[Triplet], dict[str, Any]]:
    from realm.app.training.query_writer import QueryWriter
    from realm.app.training.synthetic import ROUND_TRIP_K, synthetic_examples

    writer = QueryWriter.load(generator_model, default_cache_dir())
    with progress_bar("writing queries") as progress:
        bar = progress.add_task("writing queries", total=min(limit, len(passages.texts)))
        made = synthetic_examples(passages, writer, limit, seed, lambda n: progress.advance(bar, n))
    return made.triplets, {
        "method": "synthetic",
        "generator_model": generator_model,
        "passages_sampled": made.sampled,
        "queries_kept": made.kept,
        "round_trip_k": ROUND_TRIP_K,
    }


_READER = GeneratorOptions()


@train_app.command("generator")
def train_generator(
    collection: CollectionOpt,
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="REALM_DATA_DIR",
            file_okay=False,
            help="The retriever's data directory: the collection's passages are read from it.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            help="The new model directory (serve it: realm serve generator --model DIR).",
        ),
    ],
    questions: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="A QA file (JSON lines with question and answers) about the collection; "
            "without it, questions are made from the collection's own sentences.",
        ),
    ] = None,
    examples: Annotated[
        int, typer.Option(min=1, help="Synthetic examples to make (without --questions).")
    ] = 320,
    refusal_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9,
            help="Share of examples that pair a question with a passage that does not "
            "answer it, taught to say so.",
        ),
    ] = REFUSAL_SHARE,
    base_model: Annotated[
        str, typer.Option(help="The model to train (name, path or .gguf).")
    ] = DEFAULT_GENERATOR,
    epochs: Annotated[float, typer.Option(help="Passes over the examples.")] = _READER.epochs,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = _READER.batch_size,
    learning_rate: Annotated[
        float, typer.Option(help="Peak learning rate.")
    ] = _READER.learning_rate,
    lora_rank: Annotated[int, typer.Option(help="Rank of the LoRA adapters.")] = _READER.lora_rank,
    seed: Annotated[int, typer.Option(help="Same seed, same examples and same model.")] = 0,
    checkpoint_steps: Annotated[
        int, typer.Option(min=1, help="Steps between checkpoints (what --resume continues from).")
    ] = _READER.checkpoint_steps,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the interrupted training of --output.")
    ] = False,
) -> None:
    """Fine-tune the generator (LoRA, merged) to answer briefly from one passage, copying the
    fact or saying the passage does not answer, into a model directory the generator serves."""
    from realm.app.training.generator import (
        GeneratorBuilder,
        load_generator,
        require_generator_packages,
    )
    from realm.app.training.reading import (
        ReadingExample,
        labelled_reading,
        read_qa_file,
        synthetic_reading,
    )

    try:
        options = GeneratorOptions(
            epochs, batch_size, learning_rate, lora_rank, seed, checkpoint_steps
        )
        require_generator_packages()
        passages = CollectionPassages.read(data_dir, collection)
        generator = load_generator(base_model, default_cache_dir())
        builder = GeneratorBuilder(output, resume)
    except TrainingInputError as error:
        fail(str(error), code=2)

    def make() -> tuple[list[ReadingExample], dict[str, Any]]:
        if questions is None:
            made = synthetic_reading(passages, examples, refusal_share, seed)
            about: dict[str, Any] = {"method": "synthetic (cloze questions)"}
        else:
            made = labelled_reading(passages, read_qa_file(questions), refusal_share, seed)
            about = {"method": "labelled", "questions_file": str(questions)}
        return made.examples, {
            **about,
            "questions": made.questions,
            "unmatched": made.unmatched,
            "refusals": made.refusals,
            "refusal_share": refusal_share,
        }

    try:
        reading, about = builder.examples(make)
    except TrainingInputError as error:
        builder.discard()
        fail(str(error), code=2)
    console.print(
        f"training {output} from {base_model} on {len(reading)} examples "
        f"({about['refusals']} refusals)"
    )
    outcome = builder.train(generator, reading, options)
    builder.publish(
        {
            "collection": collection,
            "base_model": base_model,
            "examples": {"count": len(reading), **about},
            "options": asdict(options),
            "training": outcome,
        }
    )
    console.print(
        f"[bold]{output}[/] saved ({outcome['steps']} steps, loss {outcome['train_loss']}, "
        f"{outcome['seconds']} s)\nserve it: realm serve generator --model {output}"
    )
