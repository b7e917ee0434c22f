"""The README's client snippets run as written against real servers."""

import re

import pytest

from tests.servers import REPO, GeneratorProcess, RetrieverProcess


def test_the_readme_snippets_run_against_real_servers(
    retriever: RetrieverProcess, generator: GeneratorProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    snippets = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(snippets) == 2
    targets = {
        '"retriever.internal:50051"': repr(retriever.target),
        '"generator.internal:50052"': repr(generator.target),
    }
    printed = []
    for number, snippet in enumerate(snippets):
        code = snippet
        for placeholder, target in targets.items():
            code = code.replace(placeholder, target)
        exec(compile(code, f"README.md snippet {number + 1}", "exec"), {})  # noqa: S102
        printed.append(capsys.readouterr().out)

    synchronous, streamed = printed
    lines = synchronous.splitlines()
    assert lines[0].startswith("leave ")  # the search hit
    assert "25" in lines[1]  # the answer
    assert "[1] leave: Staff get 25 days of paid leave." in lines[2:]
    answer, _, sources = streamed.rpartition("\n")
    assert "25" in answer
    assert sources == "1 sources"
