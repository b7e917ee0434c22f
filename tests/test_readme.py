"""The README's client snippet runs as written against a real server."""

import re

import pytest

from tests.servers import REPO, RetrieverProcess


def test_the_readme_client_snippet_runs(
    retriever: RetrieverProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", readme, re.S)
    assert snippet is not None
    code = snippet.group(1).replace('"retriever.internal:50051"', repr(retriever.target))
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 -- the README's own code
    assert capsys.readouterr().out.startswith("leave ")
