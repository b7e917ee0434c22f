import pytest

from realm.retriever.analyzer import Analyzer, normalize


def test_normalize_folds_width_ligatures_and_case() -> None:
    assert normalize("Ｆｕｌｌ ﬁle ÉCOLE Straße") == "full file école strasse"


def test_english_removes_stopwords_and_stems() -> None:
    assert Analyzer("en").tokens("The runners were running quickly to the stations") == [
        "runner",
        "run",
        "quick",
        "station",
    ]


def test_term_frequency_is_kept() -> None:
    assert Analyzer("en").tokens("wing wing wings") == ["wing", "wing", "wing"]


def test_chinese_is_segmented_into_words() -> None:
    tokens = Analyzer("zh").tokens("机器学习是人工智能的一个分支")
    assert "机器" in tokens
    assert "学习" in tokens
    assert "人工智能" in tokens
    assert "的" not in tokens  # Chinese stopword
    assert all(len(t) < 6 for t in tokens)  # words, not the whole run


def test_mixed_chinese_and_english_tokenizes_both() -> None:
    tokens = Analyzer("zh").tokens("我们用BERT模型做Running tests。")
    assert "bert" in tokens
    assert "模型" in tokens
    assert "run" in tokens  # English inside Chinese text is stemmed
    assert "test" in tokens


def test_english_mode_still_segments_cjk_runs() -> None:
    tokens = Analyzer("en").tokens("Tea 绿茶和红茶")
    assert "tea" in tokens
    assert "绿茶" in tokens


def test_none_mode_keeps_every_word_unstemmed() -> None:
    assert Analyzer("none").tokens("The Running dogs") == ["the", "running", "dogs"]


def test_punctuation_only_gives_no_tokens() -> None:
    assert Analyzer("en").tokens(" ... !!! 。，") == []


def test_french_and_spanish_inflections_meet_at_one_stem() -> None:
    french = Analyzer("fr")
    assert french.tokens("actrices américaines") == french.tokens("actrice américaine")
    spanish = Analyzer("es")
    assert spanish.tokens("jugadores estadounidenses") == spanish.tokens("jugador estadounidense")


def test_french_keeps_accented_words_and_content_words() -> None:
    # The English stemmer stems ASCII only; French stems "États" too, and keeps "nom", which a
    # stopword list would drop.
    assert Analyzer("fr").tokens("Les États et leur nom") == ["le", "état", "et", "leur", "nom"]


def test_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="language='de'"):
        Analyzer("de")  # type: ignore[arg-type]
