"""The generator's Prometheus families: latencies recorded as requests finish, and the engine's
counters and queue read when Prometheus scrapes (``EngineCollector``), so the decode loop pays
nothing for them.
"""

from collections.abc import Iterator

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from realm.generator.scheduler import GenerationEngine
from realm.metrics import LATENCY_BUCKETS

RETRIEVAL_DURATION = Histogram(
    "realm_retrieval_duration_seconds",
    "Time the generator waited for the retriever's search, retries included.",
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "realm_time_to_first_token_seconds",
    "Time from a generation's arrival at the engine to its first token (queue and prefill).",
    buckets=LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "realm_inter_token_latency_seconds",
    "A generation's mean time between tokens after its first.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
)
GENERATION_DURATION = Histogram(
    "realm_generation_duration_seconds",
    "Time from a generation's arrival at the engine to its last token (queue, prefill, decode).",
    buckets=LATENCY_BUCKETS,
)
QUEUE_DURATION = Histogram(
    "realm_queue_duration_seconds",
    "Time a generation waited for a batch slot before its prefill started.",
    buckets=LATENCY_BUCKETS,
)

# Counter name (without _total), help, and the EngineStats field it reports.
_COUNTERS = (
    ("realm_requests_finished", "Generations finished.", "finished"),
    ("realm_prompt_tokens", "Prompt tokens prefilled or taken from the cache.", "prompt_tokens"),
    (
        "realm_prefix_cached_tokens",
        "Prompt tokens taken from the previous prompt's cache instead of being prefilled.",
        "reused_prompt_tokens",
    ),
    ("realm_generation_tokens", "Tokens generated.", "generated_tokens"),
    ("realm_decode_steps", "Decode steps run (one step advances every running row).", "steps"),
    (
        "realm_draft_tokens",
        "Tokens guessed by prompt lookup and fed to the model.",
        "drafted_tokens",
    ),
    (
        "realm_draft_accepted_tokens",
        "Guessed tokens the model confirmed (acceptance = this / realm_draft_tokens_total).",
        "confirmed_tokens",
    ),
)


class EngineCollector(Collector):
    """The engine's counters and queue, read at scrape time; nothing until the model has
    loaded and the engine is ``attach``-ed."""

    def __init__(self) -> None:
        self._engine: GenerationEngine | None = None

    def attach(self, engine: GenerationEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        if self._engine is None:
            return
        stats = self._engine.stats
        for name, documentation, field in _COUNTERS:
            yield CounterMetricFamily(name, documentation, value=getattr(stats, field))
        yield GaugeMetricFamily(
            "realm_sequences_decoding",
            "Generations in the running batch.",
            value=self._engine.sequences_decoding,
        )
        yield GaugeMetricFamily(
            "realm_requests_waiting",
            "Generations waiting for a batch slot (the engine's queue depth).",
            value=self._engine.waiting,
        )
