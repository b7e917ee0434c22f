"""The README's client snippets run as written against real servers."""

import re

import pytest

from client import Document, RetrieverClient
from tests.servers import REPO, GeneratorProcess, RetrieverProcess


def test_the_readme_client_snippet_runs(
    retriever: RetrieverProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", readme, re.S)
    assert snippet is not None
    code = snippet.group(1).replace('"retriever.internal:50051"', repr(retriever.target))
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 -- the README's own code
    assert capsys.readouterr().out.startswith("leave ")


def test_the_readme_generator_snippet_answers_with_a_cited_source(
    retriever: RetrieverProcess, generator: GeneratorProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    snippets = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(snippets) == 2
    with RetrieverClient(retriever.target) as client:
        if not any(c.name == "handbook" for c in client.list_collections()):
            client.create_collection("handbook")
        client.upsert("handbook", [Document("leave", "Staff get 25 days of paid leave.")])
    code = snippets[1].replace('"generator.internal:50052"', repr(generator.target))
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 -- the README's own code
    printed = capsys.readouterr().out
    assert "25" in printed.splitlines()[0]
    assert "[1] leave: Staff get 25 days of paid leave." in printed
