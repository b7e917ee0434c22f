"""A server command's flags, derived from its settings class (``realm.settings``).

Every knob becomes ``--flag`` with its environment variable, default and help text taken from the
one declaration; nothing about a knob is written here. Secrets become ``--flag-file`` (and
``$VAR_FILE`` or ``$VAR``), never a flag value that ``ps`` would show.
"""

import inspect
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from realm.app.cli.output import fail
from realm.settings import Knob, build, knobs

Settings = TypeVar("Settings")


def settings_command(
    settings_class: type[Settings], run: Callable[[Settings], None], doc: str
) -> Callable[..., None]:
    """A typer command taking every knob of ``settings_class``; it builds the settings (a bad
    value exits 2 naming it) and hands them to ``run``."""
    items = knobs(settings_class)

    def command(**given: Any) -> None:
        values = {knob.path: _value(knob, given[parameter_name(knob)]) for knob in items}
        try:
            settings = build(settings_class, values)
        except ValueError as error:
            fail(str(error), code=2)
        run(settings)

    command.__signature__ = inspect.Signature([_parameter(knob) for knob in items])  # type: ignore[attr-defined]
    command.__doc__ = doc
    return command


def parameter_name(knob: Knob) -> str:
    return knob.name + "_file" if knob.setting.secret else knob.name


def flag_of(knob: Knob) -> str:
    """The flag as typed on the command line (``--auth-token-file`` for a secret)."""
    return knob.flag + "-file" if knob.setting.secret else knob.flag


def env_of(knob: Knob) -> str:
    """The variable typer reads for the flag (``REALM_TOKEN_FILE`` for a secret)."""
    return knob.env + "_FILE" if knob.setting.secret else knob.env


def cli_default(knob: Knob) -> Any:
    """The knob's default as the command line spells it."""
    if knob.setting.secret:
        return None
    if _is_list(knob):
        return ",".join(knob.default)
    return knob.default


def _parameter(knob: Knob) -> inspect.Parameter:
    help_text = knob.setting.help
    annotation: Any = knob.annotation
    names = [flag_of(knob)]
    if knob.setting.secret:
        annotation = Path | None
        help_text += f" Read from this file, or from ${knob.env}; never a flag value."
    elif _is_list(knob):
        annotation = str
    elif annotation is bool:
        names = [f"{knob.flag}/--no-{knob.flag.removeprefix('--')}"]
    option = typer.Option(*names, envvar=env_of(knob), help=help_text)
    default = inspect.Parameter.empty if knob.required else cli_default(knob)
    return inspect.Parameter(
        parameter_name(knob),
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, option],
    )


def _value(knob: Knob, given: Any) -> Any:
    if knob.setting.secret:
        return read_secret(knob.env, given, flag_of(knob))
    if _is_list(knob):
        return tuple(item.strip() for item in given.split(",") if item.strip())
    return given


def read_secret(variable: str, file: Path | None, named_by: str) -> str | None:
    """A secret from ``file`` when one is named (by ``named_by``, a flag or a variable), else
    from ``$variable``: never from a flag value. A file that cannot be read exits 2."""
    if file is None:
        return os.environ.get(variable) or None
    try:
        return file.read_text(encoding="utf-8").strip() or None
    except OSError as error:
        return fail(f"{named_by}: cannot read {file}: {error.strerror}", code=2)


def _is_list(knob: Knob) -> bool:
    return typing.get_origin(knob.annotation) is tuple
