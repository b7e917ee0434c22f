"""The generator's pure parts: citations, extraction, prompt packing, QA scores, stream safety."""

import json

import pytest
import torch
from transformers import DynamicCache, LlamaForCausalLM

from realm.app.qa_metrics import contains, exact_match, normalize, token_f1
from realm.errors import InvalidArgument
from realm.generator.citations import find_citations, sentence_spans
from realm.generator.cpu_attention import IMPLEMENTATION, use_grouped_cpu_attention
from realm.generator.cpu_kernels import PackedLinear, pack_linear_layers, packed_linear_available
from realm.generator.decoding import stable_length
from realm.generator.extraction import parse_fields, to_json
from realm.generator.models import LoadedModel
from realm.generator.prompt_lookup import PromptLookup
from realm.generator.prompts import PromptBuilder, RetrievedPassage, passage_block
from realm.generator.scheduler import cache_argument
from realm.generator.settings import GeneratorLimits
from realm.generator.speculation import ConfirmationRate, choose_width, confirmed_count
from realm.generator.validation import request_from_proto, validate_fields
from realm.v1 import generator_pb2
from tests.conftest import tiny_llama_config


def _passage(doc: str, text: str, title: str = "") -> RetrievedPassage:
    return RetrievedPassage(doc, f"{doc}#0", text, 0, len(text), 1.0, title)


PASSAGES = [
    _passage("eiffel", "The Eiffel Tower in Paris was completed in 1889.", "Eiffel Tower"),
    _passage("rome", "The Colosseum in Rome held 50,000 spectators.", "Colosseum"),
]


def test_model_citations_are_parsed_and_unknown_numbers_dropped() -> None:
    answer = "It was completed in 1889 [1]. Rome had a big arena [2][7]. Nothing here [9]."
    found = [(c.number, c.origin) for c in find_citations(answer, PASSAGES, "When?")]
    assert found == [(1, "model"), (2, "model")]


def test_citation_lists_and_markers_after_the_full_stop() -> None:
    answer = "Both were big. [1, 2]"
    citations = find_citations(answer, PASSAGES, "How big?")
    assert [c.number for c in citations] == [1, 2]
    assert all(answer[c.start : c.end] == answer for c in citations)


def test_sentences_without_markers_are_cited_by_exact_spans() -> None:
    answer = "The tower was completed in 1889. The colosseum in Rome held 50,000 people."
    found = find_citations(answer, PASSAGES, "When was the Eiffel Tower finished?")
    assert [(c.number, c.origin) for c in found] == [(1, "span"), (2, "span")]
    eiffel, colosseum = found
    # "tower" repeats the question and "people" is in no passage: neither is cited.
    assert answer[eiffel.start : eiffel.end] == "completed in 1889"
    assert PASSAGES[0].text[eiffel.source_start : eiffel.source_end] == "completed in 1889"
    assert answer[colosseum.start : colosseum.end] == "colosseum in Rome held 50,000"
    cited = PASSAGES[1].text[colosseum.source_start : colosseum.source_end]
    assert cited == "Colosseum in Rome held 50,000"  # exact offsets, the passage's own case


def test_unsupported_sentences_get_no_citation_and_free_grounding_only_markers() -> None:
    assert find_citations("Bananas are yellow and curved.", PASSAGES, "Why?") == []
    answer = "It was completed in 1889."
    assert find_citations(answer, PASSAGES, "When?", "free") == []
    assert find_citations(answer, PASSAGES, "When?", "cite") != []


def test_sentence_spans_cover_the_text() -> None:
    text = "One. Two!\nThree?"
    assert [text[a:b] for a, b in sentence_spans(text)] == ["One.", "Two!", "Three?"]


def test_fields_are_exactly_those_requested_with_their_sources() -> None:
    text = "City: Paris, year: 1889\nyear: 1889\nbuilder: unknown\nextra: ignored\n"
    fields = parse_fields(text, ["city", "year", "builder"], PASSAGES)
    assert [(f.name, f.value, f.found, f.citation) for f in fields] == [
        ("city", "Paris", True, 1),
        ("year", "1889", True, 1),
        ("builder", "", False, 0),
    ]
    assert json.loads(to_json(fields)) == {"city": "Paris", "year": "1889", "builder": None}


def test_a_value_no_passage_supports_has_no_source() -> None:
    [field] = parse_fields("year: 1989", ["year"], PASSAGES)
    assert (field.found, field.citation) == (True, 0)


@pytest.mark.parametrize("fields", [[], ["ok", "o{k"], ["a"] * 17, ["same", "Same"]])
def test_bad_field_lists_are_refused(fields: list[str]) -> None:
    with pytest.raises(InvalidArgument, match="fields"):
        validate_fields(fields, max_fields=16)


def test_held_back_text_never_includes_a_partial_stop_or_character() -> None:
    assert stable_length("Hello wor", ("world",)) == len("Hello ")
    assert stable_length("Hello", ()) == 5
    assert stable_length("caf\ufffd", ()) == 3
    assert stable_length("Hello END", ("END",)) == len("Hello END")  # a whole stop is cut later


def test_squad_scores() -> None:
    assert normalize("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the Eiffel tower", ["Eiffel Tower"]) == 1.0
    assert token_f1("built in 1889", ["1889"]) == pytest.approx(0.5)
    assert token_f1("nothing", ["1889"]) == 0.0
    assert contains("It was finished in 1889.", ["1889"]) == 1.0
    assert contains("It was finished in 18890.", ["1889"]) == 0.0


def test_prompt_packs_best_passages_first_within_the_token_budget(
    default_generator: LoadedModel,
) -> None:
    tokenizer = default_generator.tokenizer
    long_text = " ".join(["tower"] * 300)
    passages = [_passage(f"d{i}", f"{i} {long_text}") for i in range(10)]
    builder = PromptBuilder(tokenizer, context_tokens=1024)
    prompt = builder.build("sentence", "What about towers?", passages, [], max_new_tokens=128)
    assert len(prompt.token_ids) <= 1024 - 128
    assert 1 <= len(prompt.passages) < len(passages)
    assert prompt.passages == passages[: len(prompt.passages)]
    rendered = tokenizer.decode(prompt.token_ids)
    assert passage_block(1, passages[0])[:40] in rendered
    assert "[" + str(len(prompt.passages) + 1) + "]" not in rendered


def test_prompt_refuses_an_answer_budget_larger_than_the_context(
    default_generator: LoadedModel,
) -> None:
    builder = PromptBuilder(default_generator.tokenizer, context_tokens=512)
    with pytest.raises(InvalidArgument, match="max_new_tokens"):
        builder.build("sentence", "Why?", PASSAGES, [], max_new_tokens=500)


def test_packed_linear_layers_compute_what_the_originals_did() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    inputs = torch.randn(3, 5, 16)
    with torch.no_grad():
        expected = model(inputs)
        weight = model[2].weight
        replaced = pack_linear_layers(model, batch_hint=8)
        if not packed_linear_available():
            pytest.skip("this torch build has no oneDNN packed linear kernels")
        assert replaced == 2
        assert isinstance(model[0], PackedLinear)
        assert model[2].weight is weight  # tied weights stay tied
        torch.testing.assert_close(model(inputs), expected, rtol=1e-4, atol=1e-5)


def test_prompt_lookup_guesses_what_followed_the_longest_match_where_it_first_occurred() -> None:
    #                  0  1  2  3  4  5  6  7  8  9
    lookup = PromptLookup([5, 6, 7, 8, 9, 1, 6, 7, 2, 3])
    lookup.extend([6, 7])  # "6 7" first ended at index 3, "1 6 7" never occurred
    assert lookup.propose(3) == [8, 9, 1]
    assert lookup.propose(10) == [8, 9, 1, 6, 7, 2, 3, 6, 7]
    assert lookup.propose(0) == []
    lookup.append(2)  # "6 7 2" occurred at 6..8: its own continuation, not "6 7"'s
    assert lookup.propose(2) == [3, 6]


def test_prompt_lookup_falls_back_to_shorter_matches_and_has_none_for_a_new_token() -> None:
    lookup = PromptLookup([1, 2, 3, 4])
    lookup.extend([9, 3])  # "9 3" is new, "3" is not
    assert lookup.propose(2) == [4, 9]
    lookup.append(42)
    assert lookup.propose(4) == []


def test_confirmed_guesses_stop_at_the_first_the_model_would_not_choose() -> None:
    assert confirmed_count([4, 5, 6], [4, 5, 9, 1]) == 2
    assert confirmed_count([4, 5, 6], [4, 5, 6, 1]) == 3
    assert confirmed_count([4], [3, 4]) == 0
    assert confirmed_count([], [7]) == 0


def test_a_row_whose_guesses_keep_failing_is_expected_to_confirm_fewer() -> None:
    hits, misses = ConfirmationRate(), ConfirmationRate()
    for _ in range(4):
        hits.record(drafted=4, confirmed=4)
        misses.record(drafted=4, confirmed=0)
    assert misses.rate < 0.2
    assert hits.rate > 0.8
    assert hits.expected_tokens(0) == misses.expected_tokens(0) == 1.0
    assert hits.expected_tokens(4) > 4
    assert misses.expected_tokens(4) < 1.2
    failed = misses.rate
    for _ in range(10):  # steps without a check: the evidence fades, the row gets tried again
        misses.record(drafted=0, confirmed=0)
    assert failed < misses.rate < 0.5


def test_the_step_width_checks_guesses_only_where_they_pay_for_the_wider_step() -> None:
    def rows(confirmed: int, count: int) -> list[ConfirmationRate]:
        rates = [ConfirmationRate() for _ in range(count)]
        for rate in rates:
            for _ in range(4):
                rate.record(drafted=4, confirmed=confirmed)
        return rates

    cpu = 0.03
    assert choose_width(rows(4, 8), [4] * 8, cpu) == 5  # copying answers: check all four
    assert choose_width(rows(0, 8), [4] * 8, cpu) == 1  # free text in a full batch: none
    assert choose_width(rows(0, 1), [4], cpu) > 1  # a lone row: checking is nearly free
    assert choose_width(rows(4, 8), [0] * 8, cpu) == 1  # nothing to guess
    assert choose_width(rows(4, 8), [2] + [0] * 7, cpu) == 1  # one row's guesses, 8 rows' cost
    assert choose_width(rows(4, 2), [2, 0], cpu) == 3


def test_grouped_cpu_attention_scores_several_new_tokens_as_stock_sdpa_does() -> None:
    """A padded batch scoring four new tokens per row over a cache, as a drafting step does:
    the grouped kernel gives the stock implementation's logits."""
    torch.manual_seed(0)
    config = tiny_llama_config(64, 64)
    model = LlamaForCausalLM(config)
    model.train(False)
    prompt = torch.randint(0, 64, (2, 10))
    prompt_mask = torch.ones_like(prompt)
    prompt_mask[0, :3] = 0  # the first row is left-padded
    step = torch.randint(0, 64, (2, 4))
    mask = torch.cat([prompt_mask, torch.ones_like(step)], dim=1)
    positions = prompt_mask.sum(dim=1, keepdim=True) + torch.arange(4)

    def step_logits() -> torch.Tensor:
        cache = {cache_argument(model): DynamicCache(config=config)}
        with torch.no_grad():
            model(input_ids=prompt, attention_mask=prompt_mask, **cache)
            out = model(input_ids=step, attention_mask=mask, position_ids=positions, **cache)
        logits: torch.Tensor = out.logits
        return logits

    model.set_attn_implementation("sdpa")
    expected = step_logits()
    assert use_grouped_cpu_attention(model)
    assert model.config._attn_implementation == IMPLEMENTATION
    torch.testing.assert_close(step_logits(), expected, rtol=1e-5, atol=1e-6)


def test_answer_options_default_to_strict_short_and_unknown_values_name_the_field() -> None:
    limits = GeneratorLimits()
    plain = request_from_proto(
        generator_pb2.GenerateRequest(question="Why?", collection="c"), limits
    )
    assert (plain.grounding, plain.style) == ("strict", "short")
    chosen = request_from_proto(
        generator_pb2.GenerateRequest(
            question="Why?",
            collection="c",
            grounding=generator_pb2.GROUNDING_CITE,
            style=generator_pb2.ANSWER_STYLE_SENTENCE,
        ),
        limits,
    )
    assert (chosen.grounding, chosen.style) == ("cite", "sentence")
    for field in ("grounding", "style"):
        request = generator_pb2.GenerateRequest(question="Why?", collection="c")
        setattr(request, field, 99)
        with pytest.raises(InvalidArgument, match=f"^{field}=99"):
            request_from_proto(request, limits)
