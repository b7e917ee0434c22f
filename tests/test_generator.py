"""The generator end to end: real retriever and generator processes, the packaged default model."""

import asyncio
import time
from pathlib import Path

import grpc
import pytest
import torch
from transformers import (
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)

from realm.client import (
    Answer,
    AskOptions,
    Document,
    GeneratorClient,
    InvalidArgument,
    RetrieverClient,
)
from realm.generator.decoding import Finished, SamplingParams
from realm.generator.models import LoadedModel, load_model
from realm.generator.prompts import PromptBuilder, RetrievedPassage
from realm.generator.scheduler import GenerationEngine
from realm.generator.settings import ModelSettings
from tests.conftest import tiny_llama_config

EIFFEL = "When was the Eiffel Tower completed?"


def _final(events: list[str | Answer]) -> Answer:
    answer = events[-1]
    assert isinstance(answer, Answer)
    return answer


def test_answer_from_the_corpus_cites_the_passage_it_came_from(
    generator_client: GeneratorClient, answer_collection: str
) -> None:
    answer = generator_client.ask(EIFFEL, answer_collection, k=3)
    assert answer.text == "1889"  # the default: the fact itself, copied from the passage
    assert answer.answered
    assert answer.context_used
    assert [s.citation for s in answer.sources] == list(range(1, len(answer.sources) + 1))
    assert answer.citations, "the answer carries no citation"
    for citation in answer.citations:
        assert 1 <= citation.citation <= len(answer.sources)
        assert 0 <= citation.start < citation.end <= len(answer.text)
    cited_docs = {s.doc_id for s in answer.cited_sources}
    assert cited_docs == {"eiffel"}
    for citation in answer.citations:  # exact offsets: the cited text is the passage's own
        assert citation.origin == "span"
        source = answer.sources[citation.citation - 1]
        quoted = source.text[citation.source_start : citation.source_end]
        assert quoted.casefold() == answer.text[citation.start : citation.end].casefold()
    eiffel = next(s for s in answer.sources if s.doc_id == "eiffel")
    assert "1889" in eiffel.text
    assert eiffel.end > eiffel.start
    assert answer.timings_ms["retrieval"] > 0
    assert answer.timings_ms["time_to_first_token"] >= answer.timings_ms["retrieval"]
    assert answer.completion_tokens > 0
    assert answer.prompt_tokens > 0


def test_a_short_answer_arrives_in_one_piece_and_every_grounding_cites_alike(
    generator_client: GeneratorClient, answer_collection: str
) -> None:
    events = list(generator_client.ask_stream(EIFFEL, answer_collection, k=2))
    assert len(events) == 2  # the fact, then the final answer
    assert events[0] == _final(events).text == "1889"
    cite = generator_client.ask(EIFFEL, answer_collection, k=2, grounding="cite")
    assert "1889" in cite.text
    assert {s.doc_id for s in cite.cited_sources} == {"eiffel"}
    free = generator_client.ask(EIFFEL, answer_collection, k=2, grounding="free")
    assert not any(c.origin == "span" for c in free.citations)  # free: the model's markers only


def test_a_question_the_documents_do_not_answer_is_not_found_rather_than_answered_from_another(
    generator_client: GeneratorClient, answer_collection: str
) -> None:
    """The Colosseum's passage gives its size, not its date; the Eiffel Tower's date (ranked
    next) answers another question. Before, the answer was "50" (cut out of "50,000")."""
    answer = generator_client.ask("When was the Colosseum built?", answer_collection, k=3)
    assert answer.text == "Not found in the documents."
    assert not answer.answered
    assert not answer.citations
    assert [s.doc_id for s in answer.sources] == ["colosseum"]  # the only passage read
    size = generator_client.ask(
        "How many spectators could the Colosseum hold?", answer_collection, k=3
    )
    assert size.answered
    assert "50,000" in size.text
    assert {s.doc_id for s in size.cited_sources} == {"colosseum"}


def test_a_which_question_is_answered_by_a_name_of_the_kind_it_asks_for(
    generator_client: GeneratorClient, client: RetrieverClient, collection_name: str
) -> None:
    """The packaged model's first answer to the sea question is "river of central and
    south" (the words new to the question); WordNet lists the Black Sea as a sea, so the
    passage is read again, opening at it. A first answer that already names a continent is
    kept."""
    client.create_collection(collection_name)
    client.upsert(
        collection_name,
        [
            Document(
                "danube",
                "The Danube is a long river of central and south-eastern Europe. It rises in the "
                "Black Forest in Germany and runs east through ten countries before it reaches the "
                "Black Sea in Romania.",
                "Danube",
            ),
            Document(
                "andes",
                "The Andes are the longest mountain range on land. They run along the western "
                "edge of South America, through seven countries.",
                "Andes",
            ),
        ],
    )
    sea = generator_client.ask("Which sea does the Danube flow into?", collection_name, k=2)
    assert sea.text == "Black Sea"
    (cited,) = sea.citations
    assert (cited.start, cited.end, cited.origin) == (0, len("Black Sea"), "span")
    assert {s.doc_id for s in sea.cited_sources} == {"danube"}
    continent = generator_client.ask("Which continent are the Andes in?", collection_name, k=2)
    assert continent.text == "South America"


def test_a_where_question_is_answered_by_a_place(
    generator_client: GeneratorClient, client: RetrieverClient, collection_name: str
) -> None:
    """Read as it comes, the tower's passage answers "wrought" (of "wrought-iron lattice"); a
    where-question asks for a place, and WordNet names Paris as one."""
    client.create_collection(collection_name)
    tower = (
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
        "It is named after the engineer Gustave Eiffel, whose company designed and built it."
    )
    client.upsert(collection_name, [Document("eiffel", tower, "Eiffel Tower")])
    where = generator_client.ask("Where is the Eiffel Tower?", collection_name, k=1)
    assert where.text == "Paris"
    assert {s.doc_id for s in where.cited_sources} == {"eiffel"}


def test_streamed_deltas_join_to_the_unary_answer(
    generator_client: GeneratorClient, answer_collection: str
) -> None:
    question = "What does photosynthesis produce?"
    options = AskOptions(k=2, max_new_tokens=40, style="sentence")
    events = list(generator_client.ask_stream(question, answer_collection, **options))
    deltas = [e for e in events[:-1] if isinstance(e, str)]
    assert len(deltas) == len(events) - 1, "the final answer must be the last message only"
    assert len(deltas) > 3, "tokens should arrive as they are produced, not in one piece"
    streamed = _final(events)
    assert "".join(deltas) == streamed.text
    assert generator_client.ask(question, answer_collection, **options).text == streamed.text


def test_cancelling_a_stream_stops_generation(
    generator_client: GeneratorClient, answer_collection: str
) -> None:
    stream = generator_client.ask_stream(
        "Write a very long essay about the history of Rome.",
        answer_collection,
        max_new_tokens=1000,
        stop=["\u2603"],  # never produced: only cancellation can end this early
        style="sentence",
        grounding="free",
    )
    first = next(stream)
    assert isinstance(first, str)
    assert generator_client.info().sequences_decoding >= 1
    stream.close()  # cancels the call
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = generator_client.info()
        if info.sequences_decoding == 0 and info.requests_in_progress == 0:
            break
        time.sleep(0.1)
    info = generator_client.info()
    assert (info.sequences_decoding, info.requests_in_progress) == (0, 0)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"temperature": 5.0}, "parameters.temperature"),
        ({"top_p": 0.0}, "parameters.top_p"),
        ({"max_new_tokens": 100_000}, "parameters.max_new_tokens"),
        ({"max_new_tokens": 0}, "parameters.max_new_tokens"),
        ({"k": 1000}, "k"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "parameters.stop"),
        ({"task": "extract"}, "fields"),
        ({"fields": ["year"]}, "fields"),
        ({"task": "extract", "fields": ["bad{name"]}, "fields"),
    ],
)
def test_bad_parameters_are_invalid_argument_naming_the_field(
    generator_client: GeneratorClient,
    answer_collection: str,
    options: dict[str, object],
    field: str,
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        generator_client.ask(EIFFEL, answer_collection, **options)  # type: ignore[arg-type]
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(caught.value)


def test_empty_question_and_bad_collection_are_invalid_argument(
    generator_client: GeneratorClient, answer_collection: str
) -> None:
    with pytest.raises(InvalidArgument, match="question"):
        generator_client.ask("  ", answer_collection)
    with pytest.raises(InvalidArgument, match="question"):
        generator_client.ask("x" * 2001, answer_collection)
    with pytest.raises(InvalidArgument, match="collection"):
        generator_client.ask(EIFFEL, "no such/collection")


def test_extract_returns_exactly_the_requested_fields(
    generator_client: GeneratorClient, answer_collection: str
) -> None:
    answer = generator_client.ask(
        "Eiffel Tower", answer_collection, k=2, task="extract", fields=["designer", "city"]
    )
    assert list(answer.extracted) == ["designer", "city"]
    assert [f.name for f in answer.fields] == ["designer", "city"]
    city = answer.fields[1]
    assert city.found
    assert "Paris" in city.value
    assert answer.sources[city.citation - 1].doc_id == "eiffel"


def test_stop_sequence_ends_the_answer_before_it(
    generator_client: GeneratorClient, answer_collection: str
) -> None:
    free = generator_client.ask(EIFFEL, answer_collection, k=2, style="sentence")
    cut_at = free.text.split()[2]
    stopped = generator_client.ask(EIFFEL, answer_collection, k=2, style="sentence", stop=[cut_at])
    assert stopped.finish_reason == "stop_sequence"
    assert stopped.text == free.text[: free.text.index(cut_at)]


def test_unknown_collection_is_not_found(generator_client: GeneratorClient) -> None:
    with pytest.raises(Exception, match="missing-collection") as caught:
        generator_client.ask(EIFFEL, "missing-collection")
    assert getattr(caught.value, "code", None) is grpc.StatusCode.NOT_FOUND


def test_info_reports_the_model_and_limits(generator_client: GeneratorClient) -> None:
    info = generator_client.info()
    assert info.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info.architecture == "causal"
    assert info.max_new_tokens >= 256
    assert info.context_tokens == 2048


def _prompts(loaded: LoadedModel) -> list[list[int]]:
    builder = PromptBuilder(loaded.tokenizer, loaded.context_tokens)
    passage = RetrievedPassage("d", "d#0", "Bees make honey from nectar.", 0, 28, 1.0, "Bees")
    questions = ["What do bees make?", "Name a colour.", "Who wrote Hamlet?", "What is 2+2?"]
    return [builder.build("sentence", q, [passage], [], 24).token_ids for q in questions]


async def test_greedy_output_is_the_same_alone_and_batched(
    default_generator: LoadedModel,
) -> None:
    engine = GenerationEngine(default_generator, max_batch_size=4)
    engine.start()
    try:
        params = SamplingParams(max_new_tokens=24)

        async def run(ids: list[int]) -> str:
            async for event in engine.generate(ids, params):
                if isinstance(event, Finished):
                    return event.text
            raise AssertionError("no Finished event")

        prompts = _prompts(default_generator)
        alone = [await run(ids) for ids in prompts]
        assert engine.stats.max_rows_seen == 1
        together = await asyncio.gather(*(run(ids) for ids in prompts))
        assert engine.stats.max_rows_seen > 1, "the concurrent requests were not batched"
        assert together == alone
    finally:
        engine.stop()


async def test_a_prompt_reuses_the_cache_of_what_it_shares_with_the_previous_one(
    default_generator: LoadedModel,
) -> None:
    reusing = GenerationEngine(default_generator, max_batch_size=4)
    from_scratch = GenerationEngine(default_generator, max_batch_size=4, reuse_prefix=False)
    reusing.start()
    from_scratch.start()
    try:
        params = SamplingParams(max_new_tokens=24)
        # The same passage under four questions, then the last prompt again: everything but
        # its final token comes from the cache.
        prompts = _prompts(default_generator)
        prompts.append(prompts[-1])
        reused = [(await _collect(reusing, ids, params))[1].text for ids in prompts]
        assert reusing.prefix_reuse is not None
        shared = next(
            i for i, column in enumerate(zip(*prompts[:4], strict=False)) if len(set(column)) > 1
        )
        assert shared > 40
        assert reusing.prefix_reuse.tokens_reused >= 3 * shared + len(prompts[-1]) - 1
        assert [(await _collect(from_scratch, ids, params))[1].text for ids in prompts] == reused
        assert from_scratch.prefix_reuse is None
    finally:
        reusing.stop()
        from_scratch.stop()


COPIED = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It "
    "is named after the engineer Gustave Eiffel, whose company designed and built the tower from "
    "1887 to 1889 as the centrepiece of the 1889 World's Fair."
)


async def test_drafting_from_the_prompt_gives_the_same_greedy_answers_in_fewer_steps(
    default_generator: LoadedModel,
) -> None:
    """Answers that copy their passage (and some that stray from it, where guesses fail),
    decoded together with and without guessed tokens: the same texts, lengths and finish
    reasons, in fewer steps, also when the cache is rebuilt without the masked-out positions of
    rejected guesses after every step. A sampling request in the same batch is never drafted for
    and still finishes."""
    builder = PromptBuilder(default_generator.tokenizer, default_generator.context_tokens)
    passage = RetrievedPassage("eiffel", "eiffel#0", COPIED, 0, len(COPIED), 1.0, "Eiffel Tower")
    questions = ["What is the Eiffel Tower?", "Name a colour.", "Summarise it in your own words."]
    prompts = [builder.build("sentence", q, [passage], [], 48).token_ids for q in questions]
    prompts.append(builder.build("sentence", "Write a haiku.", [], [], 48, False).token_ids)
    greedy = [SamplingParams(max_new_tokens=48)] * 4 + [SamplingParams(max_new_tokens=7)]
    prompts.append(prompts[0])  # the same answer, cut at 7 tokens by its limit
    sampled = SamplingParams(max_new_tokens=16, temperature=1.0, seed=3)

    async def answers(engine: GenerationEngine) -> list[tuple[str, str, int]]:
        engine.start()
        requests = [*zip(prompts, greedy, strict=True), (prompts[1], sampled)]
        try:
            results = await asyncio.gather(*(_collect(engine, *request) for request in requests))
        finally:
            engine.stop()
        *answered, (_, sample) = results
        assert sample.completion_tokens >= 1
        return [(done.text, done.reason, done.completion_tokens) for _, done in answered]

    drafting = GenerationEngine(default_generator, max_batch_size=6)
    plain = GenerationEngine(default_generator, max_batch_size=6, draft_tokens=0)
    drafted = await answers(drafting)
    assert drafted == await answers(plain)
    assert drafted[-1][1:] == ("length", 7)
    assert drafting.stats.max_rows_seen == 6
    # Some guesses were confirmed and some were not: both paths of a step ran.
    assert 0 < drafting.stats.confirmed_tokens < drafting.stats.drafted_tokens
    assert drafting.stats.steps < plain.stats.steps
    assert plain.stats.drafted_tokens == 0
    # Rebuilding the cache after every step that left masked-out positions changes nothing.
    repacking = GenerationEngine(default_generator, max_batch_size=6, max_cache_holes=0)
    assert await answers(repacking) == drafted
    assert repacking.stats.repacks > 0


async def test_seeded_sampling_is_reproducible(default_generator: LoadedModel) -> None:
    engine = GenerationEngine(default_generator, max_batch_size=4)
    engine.start()
    try:
        prompt = _prompts(default_generator)[1]

        async def run(seed: int) -> str:
            params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=seed)
            async for event in engine.generate(prompt, params):
                if isinstance(event, Finished):
                    return event.text
            raise AssertionError("no Finished event")

        first, again, other = await run(1), await run(1), await run(2)
        assert first == again
        assert first != other
    finally:
        engine.stop()


def _tiny_model(directory: Path, default: LoadedModel, seq2seq: bool) -> Path:
    """A randomly initialised model saved to disk with the default model's tokenizer: exercises
    loading by local path (the hub code path, minus the download) in a second."""
    torch.manual_seed(0)  # fixed random weights: the same few tokens every run, never EOS first
    vocab = len(default.tokenizer)
    pad = default.tokenizer.pad_token_id
    config: PretrainedConfig
    if seq2seq:
        config = T5Config(
            vocab_size=vocab,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            pad_token_id=pad,
            eos_token_id=default.tokenizer.eos_token_id,
        )
        config.decoder_start_token_id = pad
        model: PreTrainedModel = T5ForConditionalGeneration(config)
    else:
        config = tiny_llama_config(
            vocab, 512, pad_token_id=pad, eos_token_id=default.tokenizer.eos_token_id
        )
        model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    default.tokenizer.save_pretrained(directory)
    return directory


async def _collect(
    engine: GenerationEngine, ids: list[int], params: SamplingParams
) -> tuple[str, Finished]:
    pieces: list[str] = []
    async for event in engine.generate(ids, params):
        if isinstance(event, Finished):
            return "".join(pieces), event
        pieces.append(event.text)
    raise AssertionError("no Finished event")


@pytest.mark.parametrize("seq2seq", [False, True], ids=["causal", "seq2seq"])
async def test_a_local_model_of_either_architecture_loads_and_streams(
    default_generator: LoadedModel, tmp_path: Path, seq2seq: bool
) -> None:
    path = _tiny_model(tmp_path / "tiny", default_generator, seq2seq)
    loaded = load_model(ModelSettings(name_or_path=str(path), context_tokens=512))
    assert loaded.architecture == ("seq2seq" if seq2seq else "causal")
    assert loaded.context_tokens == 512
    engine = GenerationEngine(loaded, max_batch_size=4)
    assert engine.batching is not seq2seq
    engine.start()
    try:
        ids = (
            PromptBuilder(loaded.tokenizer, 512)
            .build("sentence", "Why?", [], [], 8, False)
            .token_ids
        )
        params = SamplingParams(max_new_tokens=6)
        streamed, finished = await _collect(engine, ids, params)
        assert streamed == finished.text
        assert 1 <= finished.completion_tokens <= 6
        again = await asyncio.gather(*(_collect(engine, ids, params) for _ in range(3)))
        assert all(result[1].text == finished.text for result in again)
    finally:
        engine.stop()
