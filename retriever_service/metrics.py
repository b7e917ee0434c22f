"""The retriever's Prometheus families: search latency by mode and build durations, recorded
where they happen, and the indexes' sizes and replication state, read when Prometheus scrapes.
"""

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from realm.metrics import LATENCY_BUCKETS
from realm.v1 import retriever_pb2

SEARCH_DURATION = Histogram(
    "realm_search_duration_seconds",
    "Time to rank and hydrate one search inside the retriever (no transport), by mode.",
    ["mode"],
    buckets=LATENCY_BUCKETS,
)
BUILD_DURATION = Histogram(
    "realm_index_build_duration_seconds",
    "Time to fold a collection's tail into a new generation (Annoy, BM25 arrays, store).",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)
SEARCH_BY_MODE = {mode: SEARCH_DURATION.labels(mode) for mode in ("bm25", "dense", "hybrid")}

# Gauge name, help, and the CollectionStats field it reports.
_GAUGES = (
    ("realm_index_documents", "Documents in the collection.", "documents"),
    ("realm_index_passages", "Passages in the collection (searchable rows).", "passages"),
    ("realm_index_generation", "Number of the generation being served.", "generation"),
    ("realm_index_tail_passages", "Passages in the tail, searched exactly.", "tail_passages"),
    ("realm_index_tombstones", "Rows of the generation deleted since it was built.", "tombstones"),
    ("realm_index_bytes", "Bytes of the served generation's files.", "index_bytes"),
    ("realm_index_log_bytes", "Bytes of the write-ahead log not yet folded.", "wal_bytes"),
    ("realm_index_applied_sequence", "Last log sequence applied here.", "applied_sequence"),
    ("realm_index_log_sequence", "Last sequence of the collection's log.", "log_sequence"),
    (
        "realm_replication_lag_records",
        "Records of the collection's log not yet applied here (0 on a single node).",
        "lag",
    ),
)


class IndexCollector(Collector):
    """Reads every collection's figures at scrape time (what ``Stats`` reports, no digest)."""

    def __init__(self, gather: Callable[[], Sequence[retriever_pb2.CollectionStats]]) -> None:
        self._gather = gather

    def collect(self) -> Iterator[Metric]:
        stats = self._gather()
        for name, documentation, field in _GAUGES:
            # shard is "" for an unsharded collection (Prometheus stores no empty label).
            family = GaugeMetricFamily(name, documentation, labels=["collection", "shard"])
            for collection in stats:
                shard = str(collection.shard) if collection.shards else ""
                family.add_metric([collection.name, shard], float(getattr(collection, field)))
            yield family
