"""The scheduler: many requests decode together, step by step, on one worker thread.

It admits requests from an inbox into free batch slots and runs the loop; the batch's tensors
are ``kv_batch.KVBatch``, each row's token choice, stop criteria and streaming are ``decoding``,
and the counters are ``EngineStats``.

A request is prefilled alone (its prompt runs through the model as a batch of one, so its prompt
never shares a padded matrix with another; the part it shares with the previous prompt is taken
from that prompt's cache, see ``prefix_reuse``), then joins the running batch: key/value caches are
left-padded to a common length and stacked, and the attention mask hides the padding. Every
step decodes at least one token for every running row; a row that finishes, hits a stop string or
is cancelled leaves the batch at once, and its slot goes to the next waiting request. This is
iteration-level scheduling (as in Orca and vLLM) on top of the plain transformers cache, so
throughput grows with load while a late request never waits for a long one to finish.

Position ids are counted per row from the mask, so a row sees exactly the positions and keys it
would see alone; greedy output is the same solo or batched up to float rounding of the batched
matrix products.

Greedy rows also speculate: each step feeds, after a row's last token, a few tokens guessed from
its own prompt (``prompt_lookup``) and keeps the guesses the model confirms, plus the model's own
next token, so one step can yield several tokens of a row. Every row gets the same number of
input positions; the positions a row did not use (a shorter guess, a rejected one) stay in the
cache masked out, as left padding does, and trailing ones no row used are cropped. Once the cache
holds more such positions than its longest row needs (32 by default), it is rebuilt without them.

Models whose cache is not a plain ``DynamicCache`` (sliding windows, encoder-decoder models) run
one request at a time through ``model.generate``; they still stream and stop on cancellation.
"""

import asyncio
import inspect
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from realm.errors import ResourceExhausted
from realm.generator.decoding import (
    Event,
    Finished,
    Job,
    SamplingParams,
    StopCriteria,
    choose,
    pick,
    sampler,
)
from realm.generator.grounding import CopyConstraint
from realm.generator.kv_batch import KVBatch, batchable
from realm.generator.models import LoadedModel
from realm.generator.prefix_reuse import PrefixReuse
from realm.generator.prompt_lookup import PromptLookup
from realm.generator.settings import DEFAULT_DRAFT_TOKENS
from realm.generator.speculation import choose_width, confirmed_count, token_cost

_LOGGER = logging.getLogger(__name__)
# Positions the batch's cache may hold beyond what its longest row needs (left padding, rejected
# guesses) before it is rebuilt without them: one rebuild costs about one step's cache append.
DEFAULT_MAX_CACHE_HOLES = 32


@dataclass
class EngineStats:
    """What the engine has done so far; read by tests, benchmarks and ``Info``."""

    steps: int = 0  # decode steps run
    finished: int = 0  # requests finished
    prompt_tokens: int = 0  # prompt tokens of admitted requests
    reused_prompt_tokens: int = 0  # of which taken from the previous prompt's cache
    generated_tokens: int = 0  # tokens of finished requests
    max_rows_seen: int = 0  # the most rows one step decoded
    drafted_tokens: int = 0  # guessed tokens fed to the model
    confirmed_tokens: int = 0  # guessed tokens the model confirmed
    repacks: int = 0  # times the batch's cache was rebuilt without its masked-out positions


class GenerationEngine:
    """Owns the model and the worker thread; ``generate`` is called from the event loop."""

    def __init__(
        self,
        loaded: LoadedModel,
        max_batch_size: int,
        reuse_prefix: bool = True,
        draft_tokens: int = DEFAULT_DRAFT_TOKENS,
        max_cache_holes: int = DEFAULT_MAX_CACHE_HOLES,
    ) -> None:
        if draft_tokens < 0:
            raise ValueError(f"draft_tokens={draft_tokens} must be >= 0 (0 turns drafting off)")
        self.loaded = loaded
        self.max_batch_size = max_batch_size
        self.draft_tokens = draft_tokens
        self.max_cache_holes = max_cache_holes
        self.stats = EngineStats()
        self.stops = StopCriteria(loaded.tokenizer, loaded.eos_token_ids)
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._stopping = threading.Event()
        self.batching = not loaded.is_encoder_decoder and batchable(
            DynamicCache(config=loaded.model.config)
        )
        if not self.batching:
            _LOGGER.info("model cache is not a plain DynamicCache: requests run one at a time")
        # Rows of the running batch, in cache order, and their cache.
        self._rows: list[Job] = []
        self._batch: KVBatch | None = None
        self._cache_argument = cache_argument(loaded.model)
        parameters = inspect.signature(loaded.model.forward).parameters
        # Only the last position's logits are needed; computing all of them costs a prompt-long
        # product with the vocabulary matrix.
        self._prefill_options = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        # Only the batched path prefills by itself; the benchmark turns reuse off to weigh it.
        self.prefix_reuse = (
            PrefixReuse(loaded.model.config) if reuse_prefix and self.batching else None
        )
        self._token_cost = token_cost(loaded.device.type)

    @property
    def sequences_decoding(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        """Requests not yet admitted into the batch."""
        return self._inbox.qsize()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._inbox.put(None)
        self._thread.join(timeout=30)

    async def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        constraint: CopyConstraint | None = None,
    ) -> AsyncIterator[Event]:
        """Yields deltas, then one ``Finished``; with a ``constraint``, only the tokens it allows
        are chosen. Closing the iterator early cancels the request."""
        if self._stopping.is_set():
            raise ResourceExhausted("the generator is shutting down; retry on another replica")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        job = Job(
            prompt_ids=prompt_ids,
            params=params,
            post=lambda event: _post(loop, events, event),
            constraint=constraint,
        )
        self._inbox.put(job)
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    self.stats.finished += 1
                    self.stats.generated_tokens += event.completion_tokens
                    return
        finally:
            job.cancelled.set()

    # ---- worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stopping.is_set():
            for job in self._admit():
                try:
                    if self.batching:
                        self._prefill(job)
                    else:
                        self._generate_alone(job)
                except Exception as error:  # one bad request must not take the worker down
                    _LOGGER.exception("generation failed")
                    job.post(error)
            if self._rows:
                try:
                    self._step()
                except Exception as error:
                    _LOGGER.exception("decode step failed; failing the running batch")
                    for row in self._rows:
                        row.post(error)
                    self._rows, self._batch = [], None

    def _admit(self) -> list[Job]:
        """New jobs for free slots; blocks only when there is nothing else to do."""
        room = self.max_batch_size - len(self._rows) if self.batching else 1
        admitted: list[Job] = []
        while len(admitted) < room:
            try:
                job = self._inbox.get(block=not self._rows and not admitted)
            except queue.Empty:
                break
            if job is None:  # stop() wakes the worker
                break
            if not job.cancelled.is_set():
                admitted.append(job)
        return admitted

    def _prefill(self, job: Job) -> None:
        model = self.loaded.model
        device = self.loaded.device
        job.prefill_started_at = time.perf_counter()
        if self.prefix_reuse is None:
            cache, reused = DynamicCache(config=model.config), 0
        else:
            cache, reused = self.prefix_reuse.seed(job.prompt_ids)
        self.stats.prompt_tokens += len(job.prompt_ids)
        self.stats.reused_prompt_tokens += reused
        ids = torch.tensor([job.prompt_ids[reused:]], dtype=torch.long, device=device)
        out = model(
            input_ids=ids, use_cache=True, **self._prefill_options, **{self._cache_argument: cache}
        )
        if self.prefix_reuse is not None:
            self.prefix_reuse.remember(job.prompt_ids, cache)
        job.sampler = sampler(job.params, device)
        if self.draft_tokens and job.params.greedy and job.constraint is None:
            job.drafter = PromptLookup(job.prompt_ids)
        token = choose(out.logits[:, -1, :], [job])[0]
        job.first_token_at = time.perf_counter()
        mask = torch.ones((1, len(job.prompt_ids)), dtype=torch.long, device=device)
        if self.stops.accept(job, token):
            if self._batch is None:
                self._batch = KVBatch(cache, mask)
            else:
                self._batch.add(cache, mask)
            self._rows.append(job)
            self.stats.max_rows_seen = max(self.stats.max_rows_seen, len(self._rows))

    def _step(self) -> None:
        batch = self._batch
        assert batch is not None
        guesses = [self._draft(row) for row in self._rows]
        width = choose_width(
            [row.confirmation for row in self._rows],
            [len(guess) for guess in guesses],
            self._token_cost,
        )
        drafts = [guess[: width - 1] for guess in guesses]
        # Shorter guesses are padded with the row's last token; those positions are never kept.
        inputs = [
            [row.generated[-1], *draft] + [row.generated[-1]] * (width - 1 - len(draft))
            for row, draft in zip(self._rows, drafts, strict=True)
        ]
        positions = batch.extend(width)
        out = self.loaded.model(
            input_ids=torch.tensor(inputs, device=self.loaded.device),
            attention_mask=batch.mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_argument: batch.cache},
        )
        self.stats.steps += 1
        keep, used = self._advance(drafts, out.logits)
        if width > 1 and keep:
            batch.mask_unused(used, width)
        if not keep:
            self._rows, self._batch = [], None
            return
        if len(keep) < len(self._rows):
            self._rows = [self._rows[i] for i in keep]
            batch.keep_rows(keep)
        if batch.holes > self.max_cache_holes:
            batch.repack()
            self.stats.repacks += 1

    def _advance(
        self, drafts: list[list[int]], logits: torch.Tensor
    ) -> tuple[list[int], list[int]]:
        """Hands each row the tokens the step decided: a greedy row its confirmed guesses and the
        model's next choice, a sampling row one drawn token. Returns the rows that go on, and
        how many input positions each row keeps (its last token and confirmed guesses)."""
        predicted = logits.argmax(dim=-1).tolist()
        keep: list[int] = []
        used = [0] * len(self._rows)
        for i, (row, draft) in enumerate(zip(self._rows, drafts, strict=True)):
            if row.params.greedy and row.constraint is None:
                confirmed = confirmed_count(draft, predicted[i])
                tokens = [*draft[:confirmed], int(predicted[i][confirmed])]
                row.confirmation.record(len(draft), confirmed)
                self.stats.drafted_tokens += len(draft)
                self.stats.confirmed_tokens += confirmed
            else:
                tokens = [pick(logits[i, 0], row)]
            if all(self.stops.accept(row, token) for token in tokens):
                keep.append(i)
                used[i] = len(tokens)
        return keep, used

    def _draft(self, row: Job) -> list[int]:
        """Guessed next tokens of a row, no more than it may still generate after the next one."""
        if row.drafter is None:
            return []
        room = row.params.max_new_tokens - len(row.generated) - 1
        return row.drafter.propose(min(self.draft_tokens, room))

    def _generate_alone(self, job: Job) -> None:
        """The path for models the batcher cannot merge: ``generate`` with a streaming hook."""
        model: Any = self.loaded.model
        device = self.loaded.device
        job.prefill_started_at = time.perf_counter()
        self.stats.prompt_tokens += len(job.prompt_ids)
        ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=device)
        streamer = _JobStreamer(self.stops, job)
        options: dict[str, Any] = {
            "max_new_tokens": job.params.max_new_tokens,
            "do_sample": not job.params.greedy,
            "pad_token_id": self.loaded.tokenizer.pad_token_id,
        }
        if not job.params.greedy:
            options.update(temperature=job.params.temperature, top_p=job.params.top_p)
            if job.params.seed is not None:
                torch.manual_seed(job.params.seed)
        if job.constraint is not None:
            options["logits_processor"] = LogitsProcessorList([_Constrained(job.constraint)])
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_StopWhenDone(streamer)]),
            **options,
        )
        if not streamer.done:
            self.stops.finish(job, self.stops.decode(job.generated), "stop")


class _JobStreamer(BaseStreamer):
    """Feeds ``generate``'s tokens through the same stop criteria as the batched path."""

    def __init__(self, stops: StopCriteria, job: Job) -> None:
        self.stops = stops
        self.job = job
        self.prompt_seen = False
        self.done = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            # generate() first reports the prompt (decoder-only) or the decoder's start token.
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self.done:
                return
            if not self.job.first_token_at:
                self.job.first_token_at = time.perf_counter()
            self.done = not self.stops.accept(self.job, int(token))

    def end(self) -> None:
        """Nothing to flush: ``StopCriteria.accept`` already reported the end."""


class _Constrained(LogitsProcessor):
    """Strict grounding for ``generate``: the streamer advances the constraint with each token
    (``StopCriteria.accept``), and this masks the next position's scores by it."""

    def __init__(self, constraint: CopyConstraint) -> None:
        self.constraint = constraint

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.constraint.mask(row) for row in scores])


class _StopWhenDone(StoppingCriteria):
    def __init__(self, streamer: _JobStreamer) -> None:
        self.streamer = streamer

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        done = self.streamer.done or self.streamer.job.cancelled.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def cache_argument(model: torch.nn.Module) -> str:
    """The name ``forward`` takes the key/value cache under: transformers 5 renames
    ``past_key_values`` to ``cache``."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _post(
    loop: asyncio.AbstractEventLoop,
    events: "asyncio.Queue[Event | BaseException]",
    event: Event | BaseException,
) -> None:
    loop.call_soon_threadsafe(events.put_nowait, event)
