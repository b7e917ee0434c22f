"""``realm``: run the services and use them from a shell.

The verbs live by group: ``serve`` (flags derived from each service's settings), data
(``ingest``, ``search``, ``stats``, ``compact``, ``reindex``, ``health``), ``ask``/``chat``,
``eval``, ``train`` and ``demo``; ``output`` renders for all of them. Client subcommands take
``--target`` (or ``REALM_RETRIEVER`` / ``REALM_GENERATOR``). Errors print one line and exit
non-zero.
"""

import typer

from realm import tracing
from realm.app.cli import ask, data, demo
from realm.app.cli.evaluate import eval_app
from realm.app.cli.output import fail
from realm.app.cli.serve import serve_app
from realm.app.cli.train import train_app

CLI_TELEMETRY_NAME = "realm-cli"
app = typer.Typer(help="ReaLM: retrieval-augmented generation over gRPC.", no_args_is_help=True)


@app.callback()
def _trace_commands(context: typer.Context) -> None:
    """Client commands join traces when the OTEL_* variables ask for them (``realm ask`` is
    the root of one trace through the generator and the retriever); a served process sets up
    its own tracing under its service's name."""
    try:
        tracing.check_environment()
    except ValueError as error:
        fail(str(error), code=2)
    if context.invoked_subcommand != "serve":
        tracing.configure(CLI_TELEMETRY_NAME)


app.add_typer(serve_app, name="serve")
app.add_typer(eval_app, name="eval")
app.add_typer(train_app, name="train")
for verb in (
    ask.ask,
    data.ingest,
    data.health,
    data.stats,
    data.compact,
    data.reindex,
    data.search,
    demo.demo,
    ask.chat,
):
    app.command()(verb)


if __name__ == "__main__":
    app()
