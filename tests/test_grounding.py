"""Strict grounding and short answers: the copy constraint on the packaged model's real tokenizer,
constrained generation in the real engine (batched and sampled), and where a short answer's fact
and its passage offsets are."""

import asyncio
import re

import pytest

from realm.generator.decoding import Finished, SamplingParams
from realm.generator.grounding import CONNECTORS, CopyConstraint, Vocabulary, token_pieces
from realm.generator.models import LoadedModel
from realm.generator.prompts import PromptBuilder, RetrievedPassage
from realm.generator.scheduler import GenerationEngine
from realm.generator.spans import (
    answers_kind,
    expects_number,
    locate,
    opening_rule,
    shares_subject,
    short_answer,
)

PASSAGE = RetrievedPassage(
    "lisbon",
    "lisbon#0",
    "Lisbon is the capital and largest city of Portugal, with a population of 567,131. "
    "São Jorge Castle overlooks the city from its highest hill.",
    0,
    137,
    1.0,
    "Lisbon",
)


@pytest.fixture(scope="module")
def vocabulary(default_generator: LoadedModel) -> Vocabulary:
    return Vocabulary(default_generator.tokenizer, default_generator.eos_token_ids)


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


def test_token_pieces_spell_every_byte_of_the_text(default_generator: LoadedModel) -> None:
    tokenizer = default_generator.tokenizer
    pieces = token_pieces(tokenizer)
    text = " São Jorge Castle, 567,131 — naïve"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(pieces[i] for i in ids) == text.encode()


def test_the_constraint_allows_copies_and_connectors_only(
    default_generator: LoadedModel, vocabulary: Vocabulary
) -> None:
    def first_token(text: str) -> int:
        return int(default_generator.tokenizer(text, add_special_tokens=False)["input_ids"][0])

    constraint = CopyConstraint(vocabulary, ["Where is Lisbon?", PASSAGE.text])
    allowed = set(constraint.allowed())
    for copied in ("Lisbon", " Lisbon", " Portugal", "Portugal", " Castle"):
        assert first_token(copied) in allowed, copied  # any word start of the sources
    for invented in (" Madrid", "Madrid", " Spain"):
        assert first_token(invented) not in allowed, invented
    assert first_token(" the") in allowed  # a connector, anywhere
    assert not vocabulary.eos & allowed, "nothing written yet: the answer may not end"
    for word in (" São", " Jorge"):
        for token in default_generator.tokenizer(word, add_special_tokens=False)["input_ids"]:
            assert token in constraint.allowed()
            constraint.advance(token)
    after = set(constraint.allowed())
    assert first_token(" Castle") in after  # the copy goes on, ...
    assert first_token(" and") in after  # ... a connector follows a whole word, ...
    assert vocabulary.eos & after  # ... or the answer ends
    assert first_token(" Portugal") not in after, "two spans may not abut"
    constraint.advance(first_token(" and"))
    assert first_token(" Portugal") in set(constraint.allowed())  # a new span, after "and"
    assert first_token(" Madrid") not in set(constraint.allowed())


def test_a_copy_that_stops_inside_a_word_cannot_end_there(vocabulary: Vocabulary) -> None:
    constraint = CopyConstraint(vocabulary, ["Portugal"])
    partial = next(
        t
        for t in constraint.allowed()
        if vocabulary.pieces[t].strip()
        and b"Portugal".startswith(vocabulary.pieces[t].strip())
        and len(vocabulary.pieces[t].strip()) < len(b"Portugal")
    )
    constraint.advance(partial)
    assert not vocabulary.eos & set(constraint.allowed())


async def test_strict_answers_copy_every_word_from_the_passage_or_the_question(
    default_generator: LoadedModel, vocabulary: Vocabulary
) -> None:
    """Batched greedy rows and a sampled row, all under the constraint: no word of any answer
    comes from anywhere but the passage, the question or the connecting words."""
    builder = PromptBuilder(default_generator.tokenizer, default_generator.context_tokens)
    questions = [
        "What is the capital of Portugal?",
        "Tell me about Lisbon's history and its famous football clubs.",
        "Which castle overlooks Lisbon?",
    ]
    engine = GenerationEngine(default_generator, max_batch_size=4)
    engine.start()
    try:

        async def run(question: str, params: SamplingParams) -> str:
            prompt = builder.build("sentence", question, [PASSAGE], [], 40)
            sources = [question, f"{PASSAGE.title}: {PASSAGE.text}"]
            constraint = CopyConstraint(vocabulary, sources)
            async for event in engine.generate(prompt.token_ids, params, constraint):
                if isinstance(event, Finished):
                    return event.text
            raise AssertionError("no Finished event")

        greedy = SamplingParams(max_new_tokens=40)
        sampled = SamplingParams(max_new_tokens=40, temperature=1.0, seed=3)
        answers = await asyncio.gather(
            *(run(q, greedy) for q in questions), run(questions[1], sampled)
        )
    finally:
        engine.stop()
    allowed = _words(PASSAGE.text) | _words(PASSAGE.title) | _words(" ".join(CONNECTORS))
    for question, answer in zip([*questions, questions[1]], answers, strict=True):
        assert answer.strip(), question
        assert _words(answer) <= allowed | _words(question), (question, answer)
    assert "portugal" not in _words(answers[0]) or "lisbon" in _words(answers[0])


@pytest.mark.parametrize(
    ("sentence", "question", "fact"),
    [
        ("The capital of Chad is N'Djamena.", "What is the capital of Chad?", "N'Djamena"),
        (
            "Peru is located in South America.",
            "Which continent is Peru located in?",
            "South America",
        ),
        (
            "Earthquakes are caused by a sudden release of energy, which creates waves.",
            "What causes earthquakes?",
            "sudden release of energy",
        ),
        ("Amman is the capital of Jordan.", "What is the capital of Jordan?", "Amman"),
        # A verb after the fact starts what is said about it, even where nothing repeats.
        (
            "Sicily is one of the most active volcanoes in the world",
            "Where is Mount Etna?",
            "Sicily",
        ),
    ],
)
def test_the_short_answer_is_what_the_question_did_not_already_say(
    sentence: str, question: str, fact: str
) -> None:
    span = short_answer(sentence, question)
    assert span is not None
    assert sentence[span[0] : span[1]] == fact


def test_an_answer_that_only_repeats_the_question_has_no_fact() -> None:
    assert (
        short_answer("The capital of Chad is the capital.", "What is the capital of Chad?") is None
    )


def test_a_span_is_cited_to_the_passage_about_what_was_asked() -> None:
    other = RetrievedPassage("spain", "spain#0", "Madrid is in Europe.", 0, 19, 2.0, "Spain")
    portugal = RetrievedPassage("pt", "pt#0", "Portugal lies in  Europe.", 0, 25, 1.0, "Portugal")
    (span,) = locate("It is in europe.", [other, portugal], "Which continent is Portugal in?")
    assert span.number == 2  # both say Europe; only the second is about Portugal
    assert portugal.text[span.source_start : span.source_end] == "Europe"


def test_a_question_for_a_count_or_a_date_opens_its_answer_at_a_number() -> None:
    assert expects_number("How many days of leave do staff get?")
    assert expects_number("When was the Eiffel Tower completed?")
    assert not expects_number("Who painted the Mona Lisa?")
    may_open = opening_rule("How many days of leave do staff get?")
    blob = b"Staff get 25 days of paid leave."
    word_starts = [0, *(at + 1 for at, byte in enumerate(blob) if byte == 0x20)]
    assert [at for at in word_starts if may_open(blob, at)] == [blob.index(b"25")]


def test_a_number_is_one_word_so_a_short_answer_keeps_it_whole() -> None:
    text = "It could hold between 50,000 and 80,000 spectators. It is 3.5 km long."
    span = short_answer(text, "How many spectators could the Colosseum hold?")
    assert span is not None
    assert text[span[0] : span[1]] == "50,000 and 80,000"


def test_a_when_question_is_answered_by_a_date_and_a_how_many_question_by_a_number() -> None:
    when = "When did the Second World War end?"
    for date in ("1945", "2 September 1945", "September", "the late 1980s", "the 14th century"):
        assert answers_kind(when, date), date
    for other in ("60 to 75 million", "50,000", "the Allied victory", "it may march on"):
        assert not answers_kind(when, other), other
    assert answers_kind("In what year did it end?", "1945")
    assert not answers_kind("In what year did it end?", "60 to 75 million")
    assert answers_kind("How many spectators could it hold?", "50,000")
    assert not answers_kind("How many spectators could it hold?", "a great many")
    assert answers_kind("Who painted the Mona Lisa?", "Leonardo da Vinci")
    may_open = opening_rule(when)
    blob = b"It ended on 2 September 1945 in Tokyo Bay."
    word_starts = [0, *(at + 1 for at, byte in enumerate(blob) if byte == 0x20)]
    assert [blob[at:].split()[0] for at in word_starts if may_open(blob, at)] == [
        b"2",
        b"September",
        b"1945",
    ]


def test_a_passage_shares_the_subject_of_a_question_only_through_its_content_words() -> None:
    eiffel = "The Eiffel Tower was completed in 1889 for the World's Fair."
    assert not shares_subject(eiffel, "When was the Colosseum built?")
    assert shares_subject(eiffel, "When was the Eiffel Tower completed?")
    # Derived forms count; the question's function words do not.
    assert shares_subject("Riga is a Latvian port.", "What is the capital of Latvia?")
    assert not shares_subject("What was it? When was it?", "When was the Colosseum built?")
    # A question that names its subject needs all of the name, not a word of it.
    francis = "Francis I was King of France from 1515."
    assert not shares_subject(francis, "When was Francis of Assisi born?")
    assert shares_subject(
        "Francis of Assisi was an Italian friar.", "When was Francis of Assisi born?"
    )
    # Without a name, any content word will do.
    assert shares_subject("Lava escapes from a magma chamber.", "what does lava escape from?")
    # A question written without spaces between words cannot be checked this way.
    assert shares_subject("The Great Wall is long.", "长城有多长？")


def test_a_cited_name_is_whole_though_the_question_asked_its_last_word() -> None:
    question = "Which sea does the Danube flow into?"
    text = "It reaches the Black Sea in Romania, past the black sea grass."
    danube = RetrievedPassage("danube", "danube#0", text, 0, len(text), 1.0, "Danube")
    (name,) = locate("Black Sea", [danube], question)
    assert (name.start, name.end) == (0, 9)
    assert text[name.source_start : name.source_end] == "Black Sea"
    # Words that are not a name still end on what the question did not say.
    (plain,) = locate("black sea", [danube], question)
    assert (plain.start, plain.end) == (0, 5)
