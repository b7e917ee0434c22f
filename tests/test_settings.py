"""Each service's settings class is the one source of its flags: every field is a knob, reachable
as a flag and as an environment variable, with the class's own default."""

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from realm.app.cli.main import app
from realm.app.cli.options import cli_default, env_of, flag_of, settings_command
from realm.app.settingsdoc import LIMITS_PAGE, TABLES, render
from realm.generator.settings import GeneratorConfig
from realm.retriever.settings import RetrieverConfig
from realm.settings import Knob, knobs, unknobbed

SERVICES: dict[str, tuple[type[Any], dict[str, str]]] = {
    "retriever": (RetrieverConfig, {"data_dir": "/srv/realm"}),
    "generator": (GeneratorConfig, {"retriever_target": "localhost:1"}),
}
_RUNNER = CliRunner()


def _command(name: str) -> Any:
    """The click command typer builds for ``realm serve NAME`` (typer may carry its own click,
    so it is read by attribute)."""
    return get_command(app).commands["serve"].commands[name]  # type: ignore[attr-defined]


@pytest.mark.parametrize("service", SERVICES)
def test_every_field_is_a_knob_with_a_flag_a_variable_and_the_same_default(service: str) -> None:
    settings_class, _ = SERVICES[service]
    assert unknobbed(settings_class) == []
    options = {
        option.opts[0]: option
        for option in _command(service).params
        if option.param_type_name == "option"
    }
    items = knobs(settings_class)
    assert len(items) > 30
    assert len({flag_of(k) for k in items}) == len({env_of(k) for k in items}) == len(items)
    for knob in items:
        option = options.pop(flag_of(knob))
        assert option.envvar == env_of(knob), knob.path
        assert option.required == knob.required, knob.path
        if not knob.required:
            assert option.default == cli_default(knob), knob.path
    assert options == {}  # no flag that is not a knob


def _capture(settings_class: type[Any], args: list[str], env: dict[str, str]) -> Any:
    built: list[Any] = []
    probe = typer.Typer()
    probe.command()(settings_command(settings_class, built.append, "probe"))
    result = _RUNNER.invoke(probe, args, env=env)
    assert result.exit_code in (0, 2), result.output
    return built[0] if built else result.output


def _at(settings: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        settings = getattr(settings, name)
    return settings


def _other_value(knob: Knob) -> tuple[str, Any] | None:
    """A value unlike the default, as typed and as the settings hold it."""
    default = knob.default
    value: Any = None  # paths to PEM files and secrets: test_tls starts servers with those
    if knob.annotation is bool:
        return ("false" if default else "true"), not default
    if knob.annotation in (int, int | None):  # an optional port is off (None) by default
        value = (9463 if default is None else default) + 1
    elif knob.annotation is float:
        value = default * 2
    elif knob.annotation is str and not knob.required:
        value = "x-" + default
    elif knob.annotation == tuple[str, ...]:
        return "a, b", ("a", "b")
    elif typing.get_origin(knob.annotation) is typing.Literal:
        value = next(choice for choice in typing.get_args(knob.annotation) if choice != default)
    return None if value is None else (str(value), value)


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("how", ["flag", "environment"])
def test_every_knob_reaches_the_settings(service: str, how: str) -> None:
    settings_class, required = SERVICES[service]
    # Required knobs are given as variables throughout.
    env = {knob.env: required[knob.path[-1]] for knob in knobs(settings_class) if knob.required}
    defaults = _capture(settings_class, [], env)
    reached = 0
    for knob in knobs(settings_class):
        other = _other_value(knob)
        if other is None:
            assert knob.setting.secret or "Path" in str(knob.annotation) or knob.required
            continue
        typed, value = other
        if how == "flag":
            args = [flag_of(knob)] if knob.annotation is bool else [flag_of(knob), typed]
            if knob.annotation is bool and not value:
                args = ["--no-" + flag_of(knob).removeprefix("--")]
            outcome = _capture(settings_class, args, env)
        else:
            outcome = _capture(settings_class, [], {**env, env_of(knob): typed})
        if isinstance(outcome, str):
            # The class refused the value (a port past 65535, default_k past max_k...): it
            # reached the settings, which named it.
            assert knob.path[-1] in outcome.replace("\n", ""), outcome
        else:
            assert _at(outcome, knob.path) == value, knob.path
            changed = [
                k.path
                for k in knobs(settings_class)
                if _at(outcome, k.path) != _at(defaults, k.path)
            ]
            assert changed == [knob.path]
        reached += 1
    assert reached > 25


def test_no_arguments_build_the_class_defaults(tmp_path: Path) -> None:
    built = _capture(RetrieverConfig, [], {"REALM_DATA_DIR": str(tmp_path)})
    assert built == RetrieverConfig(data_dir=tmp_path)
    built = _capture(GeneratorConfig, [], {"REALM_RETRIEVER": "localhost:1"})
    assert built == GeneratorConfig(retriever_target="localhost:1")
    assert dataclasses.asdict(built)["server"]["port"] == 50052


def test_one_token_variable_on_both_sides(tmp_path: Path) -> None:
    token = "a-long-shared-secret-token"  # noqa: S105 - a test's own token
    built = _capture(GeneratorConfig, [], {"REALM_RETRIEVER": "localhost:1", "REALM_TOKEN": token})
    assert built.server.auth_token == token
    secret = tmp_path / "token"
    secret.write_text(token + "\n", encoding="utf-8")
    built = _capture(RetrieverConfig, ["--auth-token-file", str(secret)], {"REALM_DATA_DIR": "d"})
    assert built.server.auth_token == token
    refused = _capture(
        RetrieverConfig, ["--auth-token-file", str(tmp_path / "none")], {"REALM_DATA_DIR": "d"}
    )
    assert "--auth-token-file: cannot read" in refused


def test_docs_limits_md_lists_the_current_flags() -> None:
    committed = LIMITS_PAGE.read_text(encoding="utf-8")
    assert render(committed) == committed, "docs/limits.md is stale: run 'make docs'"
    for settings_class in TABLES.values():
        for knob in knobs(settings_class):
            assert f"| `{flag_of(knob)}` | `{env_of(knob)}`" in committed
