"""Generation throughput: ReaLM's batching engine against sequential ``model.generate``.

The same grounded prompts (a Wikipedia summary and a question about it), the same packaged model,
greedy decoding and the same token limit. The peer is what a user writes without a server: each
request through ``model.generate`` one after another. ReaLM's engine runs 1, 4, 8 and 16 requests
at once, each compared with the same requests run one after another (the tokens match: greedy
output is the same either way); the bar is on 8.

``REALM_BENCH_GENERATOR`` names another model (a hub name or a local folder) to measure instead
of the packaged one, for example a larger model on a GPU machine.
"""

import asyncio
import os
import statistics
import time

import torch

from bench.common import Row
from generator_service.engine import Delta, Finished, GenerationEngine, SamplingParams
from generator_service.models import LoadedModel, load_model
from generator_service.prompts import PromptBuilder, RetrievedPassage
from generator_service.settings import ModelSettings
from realm.demo import wiki_summaries

CONCURRENCY = (1, 4, 8, 16)
BAR_AT = 8
QUICK_CONCURRENCY = (BAR_AT,)  # --quick: the row with the bar


def _prompts(loaded: LoadedModel, count: int) -> list[list[int]]:
    builder = PromptBuilder(loaded.tokenizer, loaded.context_tokens)
    prompts = []
    for document in wiki_summaries(count + 5)[5:]:  # past the demo's sample articles
        text = " ".join(document.text.split()[:120])
        passage = RetrievedPassage(
            document.id, document.id, text, 0, len(text), 1.0, document.title
        )
        question = f"What is {document.title}?"
        prompts.append(builder.build("answer", question, [passage], [], 64).token_ids)
    return prompts


def _sequential_generate(
    loaded: LoadedModel, prompts: list[list[int]], new_tokens: int
) -> list[tuple[int, float]]:
    """``(tokens, seconds)`` of each request, run one after another with ``generate`` on the
    model exactly as transformers loads it (what a user's loop would run)."""
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
            )
            # The end-of-sequence token is not part of the answer; ReaLM does not count it either.
            tokens = int((~torch.isin(out[0, tensor.shape[1] :], stops)).sum())
            measured.append((tokens, time.perf_counter() - started))
    return measured


async def _engine_run(
    engine: GenerationEngine, prompts: list[list[int]], new_tokens: int
) -> tuple[int, float, list[float]]:
    params = SamplingParams(max_new_tokens=new_tokens)
    first_token: list[float] = []

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

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(ids) for ids in prompts))
    return sum(counts), time.perf_counter() - started, first_token


def run(quick: bool) -> list[Row]:
    # On a CPU a 250-token prefill costs as much as ~5 decode steps and batching cannot share
    # it, so the batching gain depends on the answer length: 64 tokens is a short answer.
    new_tokens = 64 if quick else 128
    levels = QUICK_CONCURRENCY if quick else CONCURRENCY
    model = os.environ.get("REALM_BENCH_GENERATOR") or ModelSettings().name_or_path
    loaded = load_model(ModelSettings(name_or_path=model))
    plain = load_model(ModelSettings(name_or_path=model, pack_cpu_weights=False))
    prompts = _prompts(loaded, max(levels))
    where = torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else "CPU"
    engine = GenerationEngine(loaded, max_batch_size=max(levels))
    engine.start()
    try:
        # Warm-up on both sides: first calls pay one-off costs (kernel selection, caches).
        asyncio.run(_engine_run(engine, prompts[:1], 4))
        _sequential_generate(plain, prompts[:1], 4)
        # The peer runs every request once; each row compares against the same requests.
        peer = _sequential_generate(plain, prompts, new_tokens)
        rows = []
        for concurrency in levels:
            peer_tokens = sum(tokens for tokens, _ in peer[:concurrency])
            peer_seconds = sum(seconds for _, seconds in peer[:concurrency])
            tokens, seconds, ttft = asyncio.run(
                _engine_run(engine, prompts[:concurrency], new_tokens)
            )
            rows.append(
                Row(
                    f"generation on {where}, {concurrency} concurrent, {new_tokens} new tokens",
                    tokens / seconds,
                    "the same requests one after another with model.generate",
                    peer_tokens / peer_seconds,
                    "tokens/s",
                    3.0 if concurrency == BAR_AT else None,
                    note=(
                        f"{tokens} vs {peer_tokens} tokens; time to first token median "
                        f"{statistics.median(ttft) * 1000:,.0f} ms, max {max(ttft) * 1000:,.0f} ms"
                    ),
                )
            )
        return rows
    finally:
        engine.stop()
