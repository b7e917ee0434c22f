"""One look for every subcommand: rich on a terminal, plain when piped, one-line errors."""

import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from realm.client import Answer, SearchHit

console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Prints one clear line and exits non-zero; user errors never show a traceback."""
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")


def print_stream(events: Iterator[str | Answer]) -> Answer:
    """Prints an answer's text as it streams; returns the final answer."""
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
            {
                "citation": c.citation,
                "start": c.start,
                "end": c.end,
                "origin": c.origin,
                "source_start": c.source_start,
                "source_end": c.source_end,
            }
            for c in answer.citations
        ],
        "answered": answer.answered,
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
        spans = [
            (c.source_start, c.source_end)
            for c in answer.citations
            if c.citation == source.citation and c.source_end > c.source_start
        ]
        console.print(
            f"  [{source.citation}] [cyan]{escape(source.title or source.doc_id)}[/] {mark} "
            f"({source.score:.3f}) {quoted(source.text, spans)}",
            highlight=False,
        )


def quoted(text: str, spans: Sequence[tuple[int, int]], width: int = 160) -> str:
    """A passage as a line under an answer: around the first span the answer cites from it
    (in bold), so the reader sees where the passage says it; otherwise its beginning."""
    if not spans:
        return escape(text if len(text) <= width else text[: width - 3] + "...")
    start, end = spans[0]
    before = max(0, start - (width - (end - start)) // 2)
    after = min(len(text), max(end, before + width))
    return (
        ("..." if before else "")
        + escape(text[before:start])
        + f"[bold]{escape(text[start:end])}[/]"
        + escape(text[end:after])
        + ("..." if after < len(text) else "")
    )


def hits_json(hits: Sequence[SearchHit]) -> dict[str, object]:
    """The ``realm search --json`` shape."""
    return {
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


def hits_table(title: str, hits: Sequence[SearchHit]) -> Table:
    table = Table(title=title, show_lines=True)
    for column in ("#", "score", "document", "passage"):
        table.add_column(column, overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        label = f"{hit.doc_id}\n{hit.title}" if hit.title else hit.doc_id
        snippet = hit.text if len(hit.text) <= 300 else hit.text[:297] + "..."
        table.add_row(str(rank), f"{hit.score:.4f}", label, snippet)
    return table


def figures_table(title: str, figures: dict[str, float], names: Sequence[str], count: str) -> Table:
    """One row of metrics (four decimals) and how many items they average over."""
    table = Table(title=title)
    for name in (*names, count):
        table.add_column(name)
    table.add_row(*(f"{figures[n]:.4f}" for n in names), str(int(figures[count])))
    return table


def groups_table(title: str, groups: dict[str, dict[str, float]], metrics: Sequence[str]) -> Table:
    """One row per group (all, then each family) of metric means, the question count and the
    median seconds per question; a metric that does not apply to a group shows a dash."""
    table = Table(title=title)
    for column in ("", *metrics, "questions", "median s"):
        table.add_column(column.replace("_", " "), justify="right")
    for name, figures in groups.items():
        means = (f"{figures[m]:.3f}" if m in figures else "-" for m in metrics)
        count, seconds = int(figures["questions"]), figures["median_seconds"]
        table.add_row(name, *means, str(count), f"{seconds:.2f}")
    return table


def counts_table(title: str, rows: dict[str, dict[str, int]], fields: Sequence[str]) -> Table:
    """One row of counts per name (``realm stats``)."""
    table = Table(title=title)
    for column in ("collection", *fields):
        table.add_column(column.replace("_", " "), justify="right")
    for name, values in rows.items():
        table.add_row(name, *(f"{v:,}" for v in values.values()))
    return table


def progress_bar(label: str) -> Progress:
    """A transient bar with a count and the time taken (indexing, asking)."""
    return Progress(
        SpinnerColumn(),
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
