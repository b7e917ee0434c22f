"""Settings declared once: every knob's default, help text, flag and environment variable.

A service's settings are frozen dataclasses whose fields are made with :func:`setting` (a knob)
or :func:`group` (a nested settings dataclass, flattened). The command line derives its flags
from them (``realm.app.cli.options``) and docs/limits.md lists them, so a default, a name or a
help text is written in exactly one place. A field made any other way is not a knob: it is set
by code (which a test checks never happens to a settings class).
"""

import dataclasses
import os
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "REALM_"
_SETTING = "realm.setting"
_GROUP = "realm.group"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Setting:
    """How one knob is named and explained outside the code."""

    help: str
    # The flag without its dashes; by default the field's name with "-" for "_".
    flag: str | None = None
    # The environment variable; by default REALM_ and the flag in capitals, "_" for "-".
    env: str | None = None
    # A secret is never a flag value (``ps`` shows those): it is read from the file named by
    # --FLAG-file or $ENV_FILE, or from $ENV itself.
    secret: bool = False
    # How the docs state a default that is computed where the server runs (a home directory).
    default_doc: str | None = None


def default_cache_dir() -> Path:
    """``$REALM_CACHE_DIR``, else ``$XDG_CACHE_HOME/realm``, else ``~/.cache/realm``."""
    explicit = os.environ.get("REALM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "realm"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | None = None,
    env: str | None = None,
    secret: bool = False,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    default_doc: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line flag and an environment variable."""
    metadata = {_SETTING: Setting(help, flag, env, secret, default_doc)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def group(default_factory: Callable[[], Any]) -> Any:
    """A nested settings dataclass whose knobs are flattened into the parent's (their names
    must not collide: a test checks every command's flags are distinct)."""
    return dataclasses.field(default_factory=default_factory, metadata={_GROUP: True})


@dataclass(frozen=True, slots=True)
class Knob:
    """One flattened knob of a settings class: where it sits and what it is called."""

    path: tuple[str, ...]
    annotation: Any
    default: Any  # dataclasses.MISSING when the knob is required
    setting: Setting

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def flag(self) -> str:
        return "--" + self._words

    @property
    def env(self) -> str:
        return self.setting.env or ENV_PREFIX + self._words.upper().replace("-", "_")

    @property
    def _words(self) -> str:
        return self.setting.flag or self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def knobs(settings_class: type) -> list[Knob]:
    """Every knob of ``settings_class``, groups flattened, in declaration order."""
    return list(_knobs(settings_class, (), None))


def _knobs(cls: type, path: tuple[str, ...], instance: Any) -> Iterator[Knob]:
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        default = _default(item, instance)
        if _GROUP in item.metadata:
            yield from _knobs(hints[item.name], (*path, item.name), default)
        elif _SETTING in item.metadata:
            yield Knob((*path, item.name), hints[item.name], default, item.metadata[_SETTING])


def _default(item: "dataclasses.Field[Any]", instance: Any) -> Any:
    """A field's default as its parent group is built by default (a group's factory may give
    its members other defaults than their class does: the generator's port, for one)."""
    if instance is not None:
        return getattr(instance, item.name)
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING


def unknobbed(settings_class: type) -> list[str]:
    """Fields of a settings class (groups included) that are neither knobs nor groups."""
    hints = typing.get_type_hints(settings_class)
    missing: list[str] = []
    for item in dataclasses.fields(settings_class):
        if _GROUP in item.metadata:
            missing += [f"{item.name}.{name}" for name in unknobbed(hints[item.name])]
        elif _SETTING not in item.metadata:
            missing.append(item.name)
    return missing


def build(settings_class: type[T], values: dict[tuple[str, ...], Any]) -> T:
    """``settings_class`` with the knobs in ``values`` (keyed by :attr:`Knob.path`) set and the
    rest at their defaults; each class validates itself as it is built (ValueError)."""
    hints = typing.get_type_hints(settings_class)
    arguments: dict[str, Any] = {}
    for item in dataclasses.fields(settings_class):  # type: ignore[arg-type]
        if _GROUP in item.metadata:
            default = _default(item, None)
            arguments[item.name] = _replaced(default, hints[item.name], (item.name,), values)
        elif (item.name,) in values:
            arguments[item.name] = values[(item.name,)]
    return settings_class(**arguments)


def _replaced(
    default: Any, cls: type, path: tuple[str, ...], values: dict[tuple[str, ...], Any]
) -> Any:
    hints = typing.get_type_hints(cls)
    changes: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        here = (*path, item.name)
        if _GROUP in item.metadata:
            changes[item.name] = _replaced(
                getattr(default, item.name), hints[item.name], here, values
            )
        elif here in values:
            changes[item.name] = values[here]
    return dataclasses.replace(default, **changes) if changes else default
