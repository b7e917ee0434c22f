"""``realm demo``: its options; the orchestration lives in ``realm.app.demo``."""

from pathlib import Path
from typing import Annotated

import typer

from realm.app import demo as demo_steps
from realm.app.cli.output import fail
from realm.app.cli.shared import LanguageOpt
from realm.app.corpus import read_documents
from realm.client import Document


def demo(
    corpus: Annotated[
        Path | None, typer.Option(exists=True, help="Your own files instead.")
    ] = None,
    limit: Annotated[int, typer.Option(min=0, help="Wikipedia summaries to index; 0 = all.")] = 500,
    data_dir: Annotated[Path, typer.Option(envvar="REALM_DEMO_DIR")] = Path(".realm/demo"),
    collection: Annotated[
        str | None,
        typer.Option("--collection", "-c", help="Collection name; default wiki, wiki-LANGUAGE."),
    ] = None,
    language: LanguageOpt = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Answer length in tokens.")] = 80,
    wait: Annotated[bool, typer.Option(help="Keep serving until Ctrl-C.")] = True,
) -> None:
    """Start a retriever and a generator, index the embedded corpus (or --corpus), answer the
    sample questions with sources (in French or Spanish: run sample searches), keep serving."""
    chosen = language or "en"
    try:
        documents = (
            demo_steps.demo_summaries(limit, chosen)
            if corpus is None
            else [d for d in read_documents(corpus) if isinstance(d, Document)]
        )
    except (FileNotFoundError, ValueError) as error:
        fail(str(error), code=2)
    demo_steps.run(
        documents,
        data_dir,
        collection or ("wiki" if chosen == "en" else f"wiki-{chosen}"),
        max_new_tokens,
        ask_samples=corpus is None,
        wait=wait,
        language=chosen,
    )
