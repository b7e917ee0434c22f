"""`realm demo`, the main job, end to end on a small slice of the packaged corpus: two real
service processes, indexing, cited answers from the packaged generator, restart from disk."""

import re
from pathlib import Path

import pytest

from realm.app.corpus import wiki_summaries
from realm.app.demo import SAMPLE_QUESTIONS, demo_summaries
from tests.conftest import FIXTURES
from tests.test_cli import realm

pytestmark = pytest.mark.slow


def test_demo_indexes_answers_and_restarts_from_the_persisted_index(tmp_path: Path) -> None:
    first = realm("demo", "--no-wait", "--limit", "25", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "indexed 25 documents" in first.stdout
    blocks = first.stdout.split("Q: ")[1:]
    assert len(blocks) == len(SAMPLE_QUESTIONS)
    for block, sample in zip(blocks, SAMPLE_QUESTIONS, strict=True):
        assert block.startswith(sample.question)
        answer = block.splitlines()[1]
        # The packaged model's answer is right, and cites the article that says it.
        assert sample.fact.casefold() in answer.casefold(), (sample.question, answer)
        assert re.search(rf"\[\d\] {re.escape(sample.article)} cited", block), block
    assert "cited" in first.stdout
    assert "realm ask" in first.stdout

    second = realm("demo", "--no-wait", "--limit", "25", "--data-dir", str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert "index found: 25 documents" in second.stdout


def test_demo_on_your_own_files(tmp_path: Path) -> None:
    result = realm(
        "demo", "--no-wait", "--corpus", str(FIXTURES / "texts"), "--data-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert "indexed 2 documents" in result.stdout


def test_the_packaged_corpus_puts_the_sample_articles_first() -> None:
    documents = demo_summaries(10)
    assert [d.id for d in documents[: len(SAMPLE_QUESTIONS)]] == [
        sample.article for sample in SAMPLE_QUESTIONS
    ]
    assert len(documents) == 10
    assert all(d.text.strip() and d.metadata.get("topic") for d in documents)
    plain = wiki_summaries(0)
    assert len(plain) > 9000
    assert [d.id for d in plain] == sorted(d.id for d in plain)
