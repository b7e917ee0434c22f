"""``realm ask`` and ``realm chat``: questions to the generator, answers with their sources."""

from typing import Annotated

import typer

from realm.app.cli.output import (
    answer_json,
    console,
    fail,
    print_json,
    print_stream,
    show_sources,
)
from realm.app.cli.shared import (
    TASKS,
    CollectionOpt,
    GeneratorTarget,
    GroundingOpt,
    KOpt,
    ModeOpt,
    StyleOpt,
    answer_options,
    client_errors,
    connection,
    search_mode,
)
from realm.client import AskOptions, GeneratorClient
from realm.ports import GENERATOR_TARGET


def ask(
    question: Annotated[str, typer.Argument(help="The question (or topic, or subject).")],
    collection: CollectionOpt,
    target: GeneratorTarget = GENERATOR_TARGET,
    mode: ModeOpt = "hybrid",
    k: KOpt = 0,
    task: Annotated[str, typer.Option(help="answer, summarize or extract.")] = "answer",
    grounding: GroundingOpt = "strict",
    style: StyleOpt = "short",
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
    if task not in TASKS:
        fail(f"--task {task!r} is unknown; use answer, summarize or extract", code=2)
    chosen_grounding, chosen_style = answer_options(grounding, style)
    options = AskOptions(
        k=k,
        mode=search_mode(mode),
        task=TASKS[task],
        fields=field or [],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        allow_no_context=allow_no_context,
        grounding=chosen_grounding,
        style=chosen_style,
    )
    with client_errors(), GeneratorClient(target, options=connection(timeout)) as client:
        if as_json or not stream:
            answer = client.ask(question, collection, **options)
            if as_json:
                print_json(answer_json(answer))
                return
            console.print(answer.text, highlight=False, markup=False)
        else:
            answer = print_stream(client.ask_stream(question, collection, **options))
    show_sources(answer)


def chat(
    collection: CollectionOpt, target: GeneratorTarget = GENERATOR_TARGET, k: KOpt = 0
) -> None:
    """An interactive prompt: each line is a question, answered as it streams. Ctrl-D quits."""
    with GeneratorClient(target, options=connection(600.0)) as client:
        while True:
            try:
                question = console.input("[bold]? [/]")
            except (EOFError, KeyboardInterrupt):
                console.print()
                return
            if not question.strip():
                continue
            with client_errors():
                show_sources(print_stream(client.ask_stream(question, collection, k=k)))
