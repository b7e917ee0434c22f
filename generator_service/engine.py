"""Continuous batching: many requests decode together, step by step, on one worker thread.

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer
from transformers.generation.streamers import BaseStreamer

from realm.errors import ResourceExhausted
from realm.generator.models import LoadedModel
from realm.generator.prefix_reuse import PrefixReuse
from realm.generator.prompt_lookup import PromptLookup
from realm.generator.settings import DEFAULT_DRAFT_TOKENS
from realm.generator.speculation import (
    ConfirmationRate,
    choose_width,
    confirmed_count,
    token_cost,
)

_LOGGER = logging.getLogger(__name__)
# Positions the batch's cache may hold beyond what its longest row needs (left padding, rejected
# guesses) before it is rebuilt without them: one rebuild costs about one step's cache append.
DEFAULT_MAX_CACHE_HOLES = 32

FinishReason = Literal["stop", "length", "stop_sequence", "cancelled"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request decodes; validated by the servicer before it gets here."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True, slots=True)
class Delta:
    """The next piece of text of one request."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of one request: the whole text (the deltas joined) and its counts."""

    text: str
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    first_token_at: float
    finished_at: float


Event = Delta | Finished


@dataclass(eq=False)
class _Job:
    prompt_ids: list[int]
    params: SamplingParams
    post: Callable[[Event | BaseException], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    emitted: str = ""
    first_token_at: float = 0.0
    sampler: torch.Generator | None = None
    drafter: PromptLookup | None = None  # greedy rows of a speculating engine
    confirmation: ConfirmationRate = field(default_factory=ConfirmationRate)

    def push_text(self, text: str, final: bool) -> None:
        """Emits what is new in ``text`` as a delta, holding back what may still change."""
        safe = len(text) if final else _stable_length(text, self.params.stop)
        if safe > len(self.emitted):
            piece = text[len(self.emitted) : safe]
            self.emitted += piece
            self.post(Delta(piece))


def _stable_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` can be sent: not a partial UTF-8 character, not a stop's prefix."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[end - size : end] == stop[:size]:
                hold = max(hold, size)
                break
    return end - hold


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
        self._inbox: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._stopping = threading.Event()
        self.batching = not loaded.is_encoder_decoder and _plain_dynamic_cache(loaded)
        if not self.batching:
            _LOGGER.info("model cache is not a plain DynamicCache: requests run one at a time")
        # Rows of the running batch, in cache order.
        self._rows: list[_Job] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._cache_argument = cache_argument(loaded.model)
        parameters = inspect.signature(loaded.model.forward).parameters
        # Only the last position's logits are needed; computing all of them costs a prompt-long
        # product with the vocabulary matrix (a fifth of a 200-token prefill for SmolLM2).
        self._prefill_options = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        # Only the batched path prefills by itself; the benchmark turns reuse off to weigh it.
        self.prefix_reuse = (
            PrefixReuse(loaded.model.config) if reuse_prefix and self.batching else None
        )
        self.steps = 0  # decode steps run; read by tests and benchmarks
        self.max_rows_seen = 0
        self.drafted_tokens = 0  # guessed tokens fed to the model, and those it confirmed
        self.confirmed_tokens = 0
        self.repacks = 0  # times the batch's cache was rebuilt without its masked-out positions
        self._token_cost = token_cost(loaded.device.type)

    @property
    def sequences_decoding(self) -> int:
        return len(self._rows)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._inbox.put(None)
        self._thread.join(timeout=30)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Event]:
        """Yields deltas, then one ``Finished``. Closing the iterator early cancels the request."""
        if self._stopping.is_set():
            raise ResourceExhausted("the generator is shutting down; retry on another replica")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        job = _Job(
            prompt_ids=prompt_ids,
            params=params,
            post=lambda event: _post(loop, events, event),
        )
        self._inbox.put(job)
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
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
                    self._rows, self._cache, self._mask = [], None, None

    def _admit(self) -> list[_Job]:
        """New jobs for free slots; blocks only when there is nothing else to do."""
        room = self.max_batch_size - len(self._rows) if self.batching else 1
        admitted: list[_Job] = []
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

    def _prefill(self, job: _Job) -> None:
        model = self.loaded.model
        device = self.loaded.device
        if self.prefix_reuse is None:
            cache, reused = DynamicCache(config=model.config), 0
        else:
            cache, reused = self.prefix_reuse.seed(job.prompt_ids)
        ids = torch.tensor([job.prompt_ids[reused:]], dtype=torch.long, device=device)
        out = model(
            input_ids=ids, use_cache=True, **self._prefill_options, **{self._cache_argument: cache}
        )
        if self.prefix_reuse is not None:
            self.prefix_reuse.remember(job.prompt_ids, cache)
        job.sampler = _sampler(job.params, device)
        if self.draft_tokens and job.params.greedy:
            job.drafter = PromptLookup(job.prompt_ids)
        token = self._choose(out.logits[:, -1, :], [job])[0]
        job.first_token_at = time.perf_counter()
        mask = torch.ones((1, len(job.prompt_ids)), dtype=torch.long, device=device)
        if self.accept(job, token):
            self._join(job, cache, mask)

    def _join(self, job: _Job, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Adds one prefilled row to the running batch, left-padding whichever side is shorter."""
        if self._cache is None or self._mask is None:
            self._rows, self._cache, self._mask = [job], cache, mask
        else:
            length = max(self._mask.shape[1], mask.shape[1])
            for mine, theirs in zip(_layers(self._cache), _layers(cache), strict=True):
                keys, values = _kv(mine)
                their_keys, their_values = _kv(theirs)
                mine.keys = torch.cat([_left_pad(keys, length), _left_pad(their_keys, length)])
                mine.values = torch.cat(
                    [_left_pad(values, length), _left_pad(their_values, length)]
                )
            self._mask = torch.cat([_left_pad(self._mask, length), _left_pad(mask, length)])
            self._rows.append(job)
        self.max_rows_seen = max(self.max_rows_seen, len(self._rows))

    def _step(self) -> None:
        assert self._cache is not None
        assert self._mask is not None
        device = self.loaded.device
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
        positions = self._mask.sum(dim=1, keepdim=True) + torch.arange(width, device=device)
        self._mask = torch.cat(
            [self._mask, torch.ones((len(self._rows), width), dtype=torch.long, device=device)],
            dim=1,
        )
        out = self.loaded.model(
            input_ids=torch.tensor(inputs, device=device),
            attention_mask=self._mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_argument: self._cache},
        )
        self.steps += 1
        keep, used = self._advance(drafts, out.logits)
        if width > 1 and keep:
            self._mask_unused(used, width)
        if len(keep) < len(self._rows):
            self._shrink(keep)
        mask = self._mask
        if mask is not None and mask.shape[1] - int(mask.sum(dim=1).max()) > self.max_cache_holes:
            self._repack()

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
            if row.params.greedy:
                confirmed = confirmed_count(draft, predicted[i])
                tokens = [*draft[:confirmed], int(predicted[i][confirmed])]
                row.confirmation.record(len(draft), confirmed)
                self.drafted_tokens += len(draft)
                self.confirmed_tokens += confirmed
            else:
                tokens = [_sample(logits[i, 0].float(), row.params, row.sampler)]
            if all(self.accept(row, token) for token in tokens):
                keep.append(i)
                used[i] = len(tokens)
        return keep, used

    def _draft(self, row: _Job) -> list[int]:
        """Guessed next tokens of a row, no more than it may still generate after the next one."""
        if row.drafter is None:
            return []
        room = row.params.max_new_tokens - len(row.generated) - 1
        return row.drafter.propose(min(self.draft_tokens, room))

    def _mask_unused(self, used: list[int], width: int) -> None:
        """Masks the step's input positions each row did not keep; crops those no row kept."""
        assert self._cache is not None
        assert self._mask is not None
        device = self.loaded.device
        kept = torch.tensor(used, device=device).unsqueeze(1)
        self._mask[:, -width:] = (torch.arange(width, device=device) < kept).long()
        unused = width - max(used)
        if unused:
            self._cache.crop(-unused)
            self._mask = self._mask[:, :-unused]

    def _repack(self) -> None:
        """Rebuilds the cache with each row's kept positions moved right, in order, and only the
        left padding the longest row needs. The row that keeps the most sets the cache's length,
        but when rows take turns confirming more, or that row leaves, masked-out positions that
        no row needs stay in the cache and in every step's attention (up to 78 on the
        benchmark's 8-concurrent load) until this removes them."""
        assert self._cache is not None
        assert self._mask is not None
        device = self.loaded.device
        kept = self._mask.sum(dim=1)
        length = int(kept.max())
        # Source column of each target column: a row's kept columns, in order, right-aligned;
        # the padding on their left reads column 0 and stays masked out.
        order = torch.argsort(self._mask, dim=1, stable=True)[:, -length:]
        mask = torch.arange(length, device=device) >= (length - kept).unsqueeze(1)
        order = order.masked_fill(~mask, 0)
        for layer in _layers(self._cache):
            keys, values = _kv(layer)
            index = order[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
            layer.keys = keys.gather(2, index)
            layer.values = values.gather(2, index)
        self._mask = mask.long()
        self.repacks += 1

    def _shrink(self, keep: list[int]) -> None:
        """Drops finished rows, then the padding columns no remaining row needs."""
        assert self._cache is not None
        assert self._mask is not None
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self.loaded.device)
        self._rows = [self._rows[i] for i in keep]
        mask = self._mask.index_select(0, index)
        first_used = int(mask.any(dim=0).nonzero()[0])
        self._mask = mask[:, first_used:]
        for layer in _layers(self._cache):
            keys, values = _kv(layer)
            layer.keys = keys.index_select(0, index)[:, :, first_used:, :]
            layer.values = values.index_select(0, index)[:, :, first_used:, :]

    def _choose(self, logits: torch.Tensor, rows: list[_Job]) -> list[int]:
        """Greedy rows take the argmax; sampling rows draw from their own seeded generator."""
        chosen = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            if not row.params.greedy:
                chosen[i] = _sample(logits[i].float(), row.params, row.sampler)
        return [int(token) for token in chosen]

    def accept(self, job: _Job, token: int) -> bool:
        """Records one token; returns whether the row goes on decoding."""
        if job.cancelled.is_set():
            return False
        if token in self.loaded.eos_token_ids:
            text = self._decode(job.generated)
            self._finish(job, text, "stop")
            return False
        job.generated.append(token)
        if job.drafter is not None:
            job.drafter.append(token)
        text = self._decode(job.generated)
        for stop in job.params.stop:
            at = text.find(stop, max(0, len(job.emitted) - len(stop)))
            if at >= 0:
                self._finish(job, text[:at], "stop_sequence")
                return False
        if len(job.generated) >= job.params.max_new_tokens:
            self._finish(job, text, "length")
            return False
        job.push_text(text, final=False)
        return True

    def _decode(self, ids: list[int]) -> str:
        return str(self.loaded.tokenizer.decode(ids, skip_special_tokens=True))

    def _finish(self, job: _Job, text: str, reason: FinishReason) -> None:
        job.push_text(text, final=True)
        job.post(
            Finished(
                text=job.emitted,
                reason=reason,
                prompt_tokens=len(job.prompt_ids),
                completion_tokens=len(job.generated),
                first_token_at=job.first_token_at or time.perf_counter(),
                finished_at=time.perf_counter(),
            )
        )

    def _generate_alone(self, job: _Job) -> None:
        """The path for models the batcher cannot merge: ``generate`` with a streaming hook."""
        model: Any = self.loaded.model
        device = self.loaded.device
        ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=device)
        streamer = _JobStreamer(self, job)
        options: dict[str, Any] = {
            "max_new_tokens": job.params.max_new_tokens,
            "do_sample": not job.params.greedy,
            "pad_token_id": self.loaded.tokenizer.pad_token_id,
        }
        if not job.params.greedy:
            options.update(temperature=job.params.temperature, top_p=job.params.top_p)
            if job.params.seed is not None:
                torch.manual_seed(job.params.seed)
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_StopWhenDone(streamer)]),
            **options,
        )
        if not streamer.done:
            self._finish(job, self._decode(job.generated), "stop")


class _JobStreamer(BaseStreamer):
    """Feeds ``generate``'s tokens through the same bookkeeping as the batched path."""

    def __init__(self, engine: GenerationEngine, job: _Job) -> None:
        self.engine = engine
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
            self.done = not self.engine.accept(self.job, int(token))

    def end(self) -> None:
        """Nothing to flush: ``_accept`` already reported the end."""


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


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers; the engine only batches models whose layers are all DynamicLayer."""
    return cast(list[DynamicLayer], cache.layers)


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    if layer.keys is None or layer.values is None:
        raise RuntimeError("a cache layer is empty after prefill; the model skipped a layer")
    return layer.keys, layer.values


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pads the sequence axis (-2 for cache tensors, -1 for masks) with zeros."""
    axis = -1 if tensor.dim() == 2 else -2
    missing = length - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def _sampler(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        outside = ordered.cumsum(dim=-1) - ordered > params.top_p
        ordered[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, ordered)
    return int(torch.multinomial(probs, 1, generator=generator))


def _plain_dynamic_cache(loaded: LoadedModel) -> bool:
    """Whether every cache layer is a plain ``DynamicLayer`` that can be padded and stacked."""
    cache = DynamicCache(config=loaded.model.config)
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
