import itertools
import re

import pytest

from realm.retriever.chunker import ChunkerConfig, chunk, sentence_end_offsets

WORD = re.compile(r"\w+")


def _sentences(count: int) -> str:
    return " ".join(f"Sentence number {i} talks about topic {i}." for i in range(count))


def test_short_document_is_one_passage_without_surrounding_space() -> None:
    text = "  A short note about wings.  "
    spans = chunk(text, ChunkerConfig())
    assert len(spans) == 1
    assert text[spans[0].start : spans[0].end] == "A short note about wings."


def test_whitespace_only_document_has_no_passages() -> None:
    assert chunk("   \n ", ChunkerConfig()) == []


def test_long_document_windows_cover_every_word_in_order() -> None:
    text = _sentences(60)  # 360 words
    config = ChunkerConfig(words=40, overlap=8)
    spans = chunk(text, config)
    assert len(spans) > 1
    covered = set()
    for span in spans:
        for match in WORD.finditer(text, span.start, span.end):
            covered.add(match.start())
    assert covered == {m.start() for m in WORD.finditer(text)}
    assert [s.start for s in spans] == sorted(s.start for s in spans)


def test_windows_respect_the_word_limit_and_overlap() -> None:
    text = _sentences(60)
    config = ChunkerConfig(words=40, overlap=8)
    spans = chunk(text, config)
    for span in spans:
        assert len(WORD.findall(text[span.start : span.end])) <= config.words
    for first, second in itertools.pairwise(spans):
        assert second.start < first.end  # consecutive passages overlap


def test_windows_end_and_start_on_sentence_boundaries_when_possible() -> None:
    text = _sentences(60)
    for span in chunk(text, ChunkerConfig(words=40, overlap=8)):
        passage = text[span.start : span.end]
        assert passage.startswith("Sentence")
        assert passage.endswith(".")


def test_text_without_sentence_ends_is_still_split() -> None:
    text = " ".join(["word"] * 100)
    spans = chunk(text, ChunkerConfig(words=20, overlap=5))
    assert len(spans) >= 5
    assert spans[-1].end == len(text)


def test_chinese_counts_characters_and_cuts_at_chinese_full_stops() -> None:
    text = "机器学习是人工智能的一个分支。" * 12  # 14 characters per sentence
    spans = chunk(text, ChunkerConfig(words=30, overlap=5))
    assert len(spans) > 3
    assert text[spans[0].start : spans[0].end].endswith("。")


@pytest.mark.parametrize(("words", "overlap"), [(4, 0), (20, 20), (20, -1)])
def test_nonsense_settings_are_refused(words: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="chunk_"):
        ChunkerConfig(words=words, overlap=overlap)


def test_initials_and_titles_end_no_sentence() -> None:
    text = "J. R. R. Tolkien met Dr. Watson. The U.S. economy grew! Next."
    ends = [text[:end] for end in sentence_end_offsets(text)]
    assert ends == [
        "J. R. R. Tolkien met Dr. Watson.",
        "J. R. R. Tolkien met Dr. Watson. The U.S. economy grew!",
        text,
    ]


def test_a_window_is_not_cut_between_initials() -> None:
    text = "Dr. J. R. Tolkien wrote a book. " * 40  # 7 words a sentence
    for span in chunk(text, ChunkerConfig(words=40, overlap=8)):
        passage = text[span.start : span.end]
        assert passage.startswith("Dr. J. R. Tolkien"), passage
        assert passage.endswith("book."), passage
