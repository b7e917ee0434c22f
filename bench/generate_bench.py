"""Generation throughput: ReaLM's batching engine against sequential ``model.generate``.

The same grounded prompts (a Wikipedia summary and a question about it), the same packaged model,
greedy decoding and the same token limit. The peer is what a user writes without a server: each
request through ``model.generate`` one after another. "N concurrent" is a sustained load, as
serving benchmarks count it: N clients each send their next request as soon as their last one is
answered, through twice N requests, so N requests are in flight until the last ones drain. Each
row is compared with the same requests run one after another (the tokens match: greedy output is
the same either way); the bar is on 8. Reference rows at 8, without a bar: the engine without
drafting tokens from the prompt (also in ``--quick``), and in the full run one burst of 8 requests
(all eight prefills run before any decoding), the engine without prefix reuse, and the same ReaLM
run against ``generate`` with transformers' own prompt-lookup decoding, which a user could switch
on in a sequential loop.

``REALM_BENCH_GENERATOR`` names another model (a hub name or a local folder) to measure instead
of the packaged one, for example a larger model on a GPU machine.
"""

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from itertools import zip_longest

import torch

from bench.common import Row
from realm.app.corpus import wiki_summaries
from realm.generator.decoding import Delta, Finished, SamplingParams
from realm.generator.models import LoadedModel, load_model
from realm.generator.prompts import PromptBuilder, RetrievedPassage
from realm.generator.scheduler import GenerationEngine
from realm.generator.settings import DEFAULT_DRAFT_TOKENS, ModelSettings

BAR_AT = 8
# N clients send twice N requests, so N are in flight for most of the run. With fewer, the start
# (N prefills before any decoding) weighs more: 12 requests at 8 concurrent read 3.16x where 16
# read 3.51x in the same session (64-token limit, the peer measured first). At 8 the sequential
# peer alone takes ~80-90 s of --quick's five minutes on 2 cores.
REQUESTS_PER_CLIENT = 2


def _prompts(loaded: LoadedModel, count: int) -> list[list[int]]:
    builder = PromptBuilder(loaded.tokenizer, loaded.context_tokens)
    prompts = []
    for document in wiki_summaries(count):
        text = " ".join(document.text.split()[:120])
        passage = RetrievedPassage(
            document.id, document.id, text, 0, len(text), 1.0, document.title
        )
        question = f"What is {document.title}?"
        prompts.append(builder.build("sentence", question, [passage], [], 64).token_ids)
    return prompts


PEER = "the same requests one after another with model.generate"
LOOKUP_PEER = f"{PEER}(prompt_lookup_num_tokens={DEFAULT_DRAFT_TOKENS})"


def _sequential_generate(
    loaded: LoadedModel, prompts: list[list[int]], new_tokens: int, prompt_lookup: bool = False
) -> list[tuple[int, float]]:
    """``(tokens, seconds)`` of each request, run one after another with ``generate`` on the
    model as transformers loads it (what a user's loop would run), optionally with
    transformers' prompt-lookup decoding."""
    options = {"prompt_lookup_num_tokens": DEFAULT_DRAFT_TOKENS} if prompt_lookup else {}
    model = loaded.model
    stops = torch.tensor(sorted(loaded.eos_token_ids), device=loaded.device)
    measured = []
    with torch.inference_mode():
        for ids in prompts:
            started = time.perf_counter()
            tensor = torch.tensor([ids], device=loaded.device)
            out = model.generate(  # type: ignore[operator]
                tensor,
                attention_mask=torch.ones_like(tensor),
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=loaded.tokenizer.pad_token_id,
                **options,
            )
            # The end-of-sequence token is not part of the answer; ReaLM does not count it either.
            tokens = int((~torch.isin(out[0, tensor.shape[1] :], stops)).sum())
            measured.append((tokens, time.perf_counter() - started))
    return measured


async def _engine_run(
    engine: GenerationEngine, prompts: list[list[int]], new_tokens: int, concurrency: int
) -> tuple[int, float, list[float]]:
    """``concurrency`` clients working through ``prompts``, each sending its next request when
    its last one finishes: ``(tokens, seconds, times to first token)``."""
    params = SamplingParams(max_new_tokens=new_tokens)
    first_token: list[float] = []
    waiting = iter(prompts)  # shared by the clients; the event loop runs one at a time

    async def one(ids: list[int]) -> int:
        submitted = time.perf_counter()
        seen_first = False
        async for event in engine.generate(ids, params):
            if isinstance(event, Delta) and not seen_first:
                seen_first = True
                first_token.append(time.perf_counter() - submitted)
            if isinstance(event, Finished):
                return event.completion_tokens
        raise AssertionError("no Finished event")

    async def client() -> int:
        return sum([await one(ids) for ids in waiting])

    started = time.perf_counter()
    counts = await asyncio.gather(*(client() for _ in range(concurrency)))
    return sum(counts), time.perf_counter() - started, first_token


def _row(
    label: str,
    measured: tuple[int, float, list[float]],
    peer: list[tuple[int, float]],
    bar: float | None,
    peer_name: str = PEER,
) -> Row:
    tokens, seconds, ttft = measured
    peer_tokens = sum(count for count, _ in peer)
    if peer_name == PEER:
        timing = (
            f"time to first token median {statistics.median(ttft) * 1000:,.0f} ms, "
            f"max {max(ttft) * 1000:,.0f} ms"
        )
    else:
        timing = "the same ReaLM run as the barred row"
    return Row(
        label,
        tokens / seconds,
        peer_name,
        peer_tokens / sum(spent for _, spent in peer),
        "tokens/s",
        bar,
        note=f"{tokens} vs {peer_tokens} tokens; {timing}",
    )


@dataclass(frozen=True, slots=True)
class _Measurement:
    label: str
    requests: int
    concurrency: int
    bar: float | None = None
    reuse_prefix: bool = True
    draft_tokens: int = DEFAULT_DRAFT_TOKENS

    @property
    def engine(self) -> tuple[bool, int]:
        return self.reuse_prefix, self.draft_tokens


def _measurements(quick: bool, new_tokens: int, where: str) -> list[_Measurement]:
    """The rows in the order they run: in the full run the barred row sits mid-way, between the
    two halves of the peer's run (see ``run``), and the table lists them by concurrency."""
    tokens = f"{new_tokens} new tokens"

    def sustained(concurrency: int) -> _Measurement:
        requests = REQUESTS_PER_CLIENT * concurrency
        return _Measurement(
            f"generation on {where}, {concurrency} concurrent ({requests} requests), {tokens}",
            requests,
            concurrency,
            3.0 if concurrency == BAR_AT else None,
        )

    at_bar = REQUESTS_PER_CLIENT * BAR_AT
    without_drafting = _Measurement(
        f"generation on {where}, {BAR_AT} concurrent ({at_bar} requests), {tokens}, "
        "without drafting",
        at_bar,
        BAR_AT,
        draft_tokens=0,
    )
    if quick:
        return [sustained(BAR_AT), without_drafting]
    return [
        sustained(1),
        sustained(16),
        sustained(BAR_AT),
        without_drafting,
        sustained(4),
        _Measurement(
            f"generation on {where}, one burst of {BAR_AT} requests, {tokens}", BAR_AT, BAR_AT
        ),
        _Measurement(
            f"generation on {where}, {BAR_AT} concurrent ({at_bar} requests), {tokens}, "
            "without prefix reuse",
            at_bar,
            BAR_AT,
            reuse_prefix=False,
        ),
    ]


def run(quick: bool) -> list[Row]:
    # On a CPU a 175-token prefill costs as much as ~5 decode steps and batching cannot share
    # it, so the batching gain depends on the answer length: 48 tokens (--quick, to fit its
    # five minutes) cut a few of the answers short, which averaged 51 tokens under a limit of 64.
    new_tokens = 48 if quick else 128
    model = os.environ.get("REALM_BENCH_GENERATOR") or ModelSettings().name_or_path
    loaded = load_model(ModelSettings(name_or_path=model))
    plain = load_model(ModelSettings(name_or_path=model, pack_cpu_weights=False))
    plain.model.set_attn_implementation("sdpa")  # the peer runs transformers' own attention
    where = torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else "CPU"
    measurements = _measurements(quick, new_tokens, where)
    # The warm-up prompt is not among the measured ones: the engine would reuse its whole cache.
    *prompts, warm_up = _prompts(loaded, max(m.requests for m in measurements) + 1)
    batch_size = max(m.concurrency for m in measurements)
    engines = {
        (reuse, draft): GenerationEngine(loaded, batch_size, reuse_prefix=reuse, draft_tokens=draft)
        for reuse, draft in {m.engine for m in measurements}
    }
    # The sequential peer as a user writes it, and (full run) with transformers' prompt lookup.
    lookups = [False] if quick else [False, True]
    for engine in engines.values():
        engine.start()
    try:
        # Warm-up on both sides: first calls pay one-off costs (kernel selection, caches).
        for engine in engines.values():
            asyncio.run(_engine_run(engine, [warm_up], 4, 1))
        for lookup in lookups:
            _sequential_generate(plain, [warm_up], 4, lookup)
        # The peer runs every request once, the even ones before ReaLM's runs and the odd ones
        # after (its variants in mirrored order), so a drift in the machine's speed (~30% within
        # a session here) falls on both sides alike; each row compares against the same requests.
        before = {
            lookup: _sequential_generate(plain, prompts[0::2], new_tokens, lookup)
            for lookup in lookups
        }
        measured = {
            m: asyncio.run(
                _engine_run(engines[m.engine], prompts[: m.requests], new_tokens, m.concurrency)
            )
            for m in measurements
        }
        after = {
            lookup: _sequential_generate(plain, prompts[1::2], new_tokens, lookup)
            for lookup in reversed(lookups)
        }
    finally:
        for engine in engines.values():
            engine.stop()
    peers = {
        lookup: [
            done
            for pair in zip_longest(before[lookup], after[lookup])
            for done in pair
            if done is not None
        ]
        for lookup in lookups
    }
    by_concurrency = sorted(measurements, key=lambda m: (m.concurrency, m.bar is None))
    rows = [_row(m.label, measured[m], peers[False][: m.requests], m.bar) for m in by_concurrency]
    if not quick:
        barred = next(m for m in measurements if m.bar is not None)
        rows.append(
            _row(barred.label, measured[barred], peers[True][: barred.requests], None, LOOKUP_PEER)
        )
    return rows
