"""The layers of docs/architecture.md, checked on every import in the source tree.

Foundation (``realm.*`` below) imports no service; each service and the client import the
foundation and themselves only; the application (``realm.app``) sits above all of them. Deferred
imports inside functions count: a lazy back-edge is still a back-edge.
"""

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.servers import REPO

APPLICATION = "application"
FOUNDATION = "foundation"
# Which layers each layer may import (its own included).
ALLOWED: dict[str, set[str]] = {
    FOUNDATION: {FOUNDATION},
    "retriever": {FOUNDATION, "retriever"},
    "generator": {FOUNDATION, "generator"},
    "client": {FOUNDATION, "client"},
    APPLICATION: {FOUNDATION, "retriever", "generator", "client", APPLICATION},
}
_SUBPACKAGES = {
    "realm.app": APPLICATION,
    "realm.retriever": "retriever",
    "realm.generator": "generator",
    "realm.client": "client",
}
# The folders' own names are not importable after install; an import of one is a mistake.
FOLDER_NAMES = ("client", "retriever_service", "generator_service")


def layer_of(module: str) -> str | None:
    """The layer a ``realm`` module belongs to; None for anything outside ``realm``."""
    for package, layer in _SUBPACKAGES.items():
        if module == package or module.startswith(package + "."):
            return layer
    if module == "realm" or module.startswith("realm."):
        return FOUNDATION
    return None


def _modules(root: Path) -> Iterator[tuple[str, Path]]:
    """Every module under ``root/realm`` with its dotted name, through the links that map the
    service and client folders into the namespace; generated stubs are left out."""
    for folder, _, files in os.walk(root / "realm", followlinks=True):
        relative = Path(folder).relative_to(root)
        if relative.parts[:2] == ("realm", "v1"):
            continue
        for name in files:
            if name.endswith(".py"):
                parts = [*relative.parts, name.removesuffix(".py")]
                if parts[-1] == "__init__":
                    parts.pop()
                yield ".".join(parts), Path(folder) / name


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Absolute names imported by a module (relative imports resolved), anywhere in it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from realm import errors" imports realm.errors: judge each name as a module too.
            yield base, node.lineno
            yield from ((f"{base}.{alias.name}", node.lineno) for alias in node.names)


def back_edges(root: Path) -> tuple[list[str], int]:
    """Imports that climb a layer or name a folder instead of its ``realm`` package, and how
    many imports between layers were checked."""
    problems: list[str] = []
    checked = 0
    for module, path in _modules(root):
        layer = layer_of(module)
        assert layer is not None
        for imported, line in _imports(module, path):
            where = f"{path.relative_to(root)}:{line}"
            if imported.split(".")[0] in FOLDER_NAMES:
                problems.append(f"{where}: imports {imported!r}; use its realm.* name")
                continue
            target = layer_of(imported)
            if target is None:
                continue
            checked += 1
            if target not in ALLOWED[layer]:
                problems.append(f"{where}: {module} ({layer}) imports {imported} ({target})")
    return sorted(set(problems)), checked


def test_every_import_points_down_the_layers() -> None:
    problems, checked = back_edges(REPO)
    assert problems == []
    assert checked > 600  # the walk really reached the services through their links (821 now)


def test_bench_and_tests_use_the_namespace() -> None:
    for folder in ("bench", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            for imported, line in _imports(f"{folder}.{path.stem}", path):
                assert imported.split(".")[0] not in FOLDER_NAMES, f"{path}:{line}: {imported}"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_deliberate_back_edge_is_caught(tmp_path: Path) -> None:
    inits = {f"realm/{p}__init__.py": "" for p in ("", "retriever/", "client/", "app/")}
    clean = _tree(
        tmp_path / "clean",
        {
            **inits,
            "realm/errors.py": "import grpc\n",
            "realm/retriever/store.py": "from realm.errors import StorageError\n",
            "realm/client/core.py": "from .. import errors\n",
            "realm/app/cli.py": "from realm.retriever import store\nimport realm.client.core\n",
        },
    )
    assert back_edges(clean) == ([], 7)  # a "from" import is judged as a module and per name
    broken = _tree(
        tmp_path / "broken",
        {
            **inits,
            # The foundation reaching up, lazily, inside a function.
            "realm/errors.py": "def f():\n    from realm.retriever import store\n",
            "realm/retriever/store.py": "from realm.client import core\n",
            "realm/client/core.py": "from ..app import cli\n",
            "realm/app/cli.py": "import retriever_service.store\n",
        },
    )
    problems, _ = back_edges(broken)
    assert problems == [
        "realm/app/cli.py:1: imports 'retriever_service.store'; use its realm.* name",
        "realm/client/core.py:1: realm.client.core (client) imports realm.app (application)",
        "realm/client/core.py:1: realm.client.core (client) imports realm.app.cli (application)",
        "realm/errors.py:2: realm.errors (foundation) imports realm.retriever (retriever)",
        "realm/errors.py:2: realm.errors (foundation) imports realm.retriever.store (retriever)",
        "realm/retriever/store.py:1: realm.retriever.store (retriever) imports realm.client "
        "(client)",
        "realm/retriever/store.py:1: realm.retriever.store (retriever) imports "
        "realm.client.core (client)",
    ]


def test_only_the_realm_namespace_is_installed(tmp_path: Path) -> None:
    """From outside the checkout (so the folders are not on the path) the packages are
    ``realm.*``; the folders' names are not importable."""
    script = (
        "import importlib.util as u, realm.client, realm.retriever, realm.generator, realm.app\n"
        "print(*(u.find_spec(n) is None for n in " + repr(FOLDER_NAMES) + "))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]
