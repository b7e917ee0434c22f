"""``realm serve retriever|generator``: every flag comes from the service's settings class."""

import asyncio

import typer

from realm import logs
from realm.app.cli.options import settings_command
from realm.app.cli.output import fail
from realm.files import DirectoryLocked
from realm.generator.settings import GeneratorConfig
from realm.retriever.settings import RetrieverConfig

serve_app = typer.Typer(help="Run a service.", no_args_is_help=True)


def _serve_retriever(config: RetrieverConfig) -> None:
    from realm.retriever.server import serve  # the server stack loads only for this command

    logs.configure(config.server.log_level)
    try:
        asyncio.run(serve(config))
    except DirectoryLocked as error:
        fail(str(error), code=1)


def _serve_generator(config: GeneratorConfig) -> None:
    from realm.generator.server import serve  # torch and transformers load only here

    logs.configure(config.server.log_level)
    asyncio.run(serve(config))


serve_app.command("retriever")(
    settings_command(RetrieverConfig, _serve_retriever, "Serve the retriever until SIGTERM/SIGINT.")
)
serve_app.command("generator")(
    settings_command(GeneratorConfig, _serve_generator, "Serve the generator until SIGTERM/SIGINT.")
)
