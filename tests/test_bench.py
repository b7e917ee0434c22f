"""The benchmark runner that `make bench` calls: one quick benchmark end to end, its table in
the report and its row in the JSON file (speed itself is never asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from bench.common import Row, table
from bench.generate_bench import _engine_run, _prompts
from bench.load import run_load
from bench.transport_floor import save_responses
from realm.app.supervisor import ServiceProcess
from realm.generator.models import LoadedModel
from realm.generator.scheduler import GenerationEngine
from realm.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc
from tests.servers import REPO, RetrieverProcess

pytestmark = pytest.mark.slow


def test_a_quick_benchmark_writes_its_report_and_json(tmp_path: Path) -> None:
    report, results = tmp_path / "benchmarks.md", tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "encode", "--quick", "--json", str(results)],
        cwd=REPO,
        env={**os.environ, "REALM_BENCH_REPORT": str(report)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    rows = {row["peer"]: row for row in json.loads(results.read_text()).values()}
    assert set(rows) == {"raw SentenceTransformer.encode", "float32 torch (the encoder before)",
                         "float32 torch", "all-MiniLM-L6-v2 int8 ONNX (English default)",
                         "all-MiniLM-L6-v2 int8 ONNX"}  # fmt: skip
    assert rows["float32 torch"]["unit"] == "ms"  # query latency: int8 ONNX against torch
    # The multilingual encoder's cost is shown, with no bar to meet.
    assert rows["all-MiniLM-L6-v2 int8 ONNX"]["unit"] == "ms"
    assert rows["all-MiniLM-L6-v2 int8 ONNX (English default)"]["meets_bar"] is None
    row = rows["raw SentenceTransformer.encode"]
    assert row["unit"] == "passages/s"
    assert row["realm"] > 0
    assert row["ratio"] == pytest.approx(row["realm"] / row["peer_value"])
    assert row["bar"] == 0.95
    assert row["meets_bar"] == (row["ratio"] >= 0.95)
    text = report.read_text()
    assert "<!-- bench:encode -->" in text
    assert "python -m bench encode --quick" in text


def test_unknown_benchmarks_are_refused_with_the_choices() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "nonsense"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "generate" in run.stderr
    assert "memory" in run.stderr


def test_a_reference_peer_has_no_bar_to_meet() -> None:
    """hnswlib and rank_bm25 are shown for reference: no bar, neither 'yes' nor 'NO'."""
    reference = Row("dense queries/s, 100 vectors", 50.0, "hnswlib", 100.0, "q/s", None)
    barred = Row("dense queries/s, 100 vectors", 50.0, "exact numpy matmul", 10.0, "q/s", 5.0)
    assert reference.meets_bar is None
    assert reference.as_json()["meets_bar"] is None
    assert barred.meets_bar is True
    reference_line, barred_line = table([reference, barred]).splitlines()[2:4]
    assert reference_line.endswith("| 0.50x | — | — |")
    assert barred_line.endswith("| 5.00x | ≥ 5x | yes |")


async def test_the_generation_load_keeps_n_requests_in_flight(
    default_generator: LoadedModel,
) -> None:
    """N concurrent clients keep N requests in flight, no more: each sends its next request
    only when its last one is answered, and every request is answered."""
    engine = GenerationEngine(default_generator, max_batch_size=8)
    engine.start()
    try:
        tokens, seconds, first_tokens = await _engine_run(
            engine, _prompts(default_generator, 6), 4, 2
        )
    finally:
        engine.stop()
    assert len(first_tokens) == 6
    assert 6 <= tokens <= 24
    assert seconds > 0
    assert engine.stats.max_rows_seen == 2


def test_the_transport_floor_sends_the_real_servers_bytes(
    retriever: RetrieverProcess, fixture_collection: str, tmp_path: Path
) -> None:
    """The gRPC benchmark's floor server answers each query with the response prepared for it,
    what the real retriever sent (the same fields and size), so the two differ only by the
    search."""
    requests = [
        retriever_pb2.SearchRequest(
            collection=fixture_collection, query=q, k=10, mode=common_pb2.SEARCH_MODE_BM25
        )
        for q in ("iron tower in Paris", "coffee", "remote procedure calls")
    ]
    with grpc.insecure_channel(retriever.target) as channel:
        real = [retriever_pb2_grpc.RetrieverServiceStub(channel).Search(r) for r in requests]
    assert all(response.hits for response in real)
    prepared = tmp_path / "prepared.bin"
    save_responses(prepared, requests, real)
    with (
        ServiceProcess(
            "retriever",
            tmp_path / "floor.log",
            "--responses",
            str(prepared),
            module="bench.transport_floor",
        ) as floor,
        grpc.insecure_channel(floor.target) as channel,
    ):
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        answered = [stub.Search(r) for r in reversed(requests)]
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Search(retriever_pb2.SearchRequest(collection=fixture_collection, query="nope"))
        # The load generator: 8 clients over 4 connections send every request exactly once.
        unanswerable = retriever_pb2.SearchRequest(collection=fixture_collection, query="nope")
        load = run_load(floor.target, [*requests * 10, unanswerable], 8, connections=4)
    # Map entries (metadata) may come in another order after a parse: compare them sorted.
    assert [a.SerializeToString(deterministic=True) for a in reversed(answered)] == [
        r.SerializeToString(deterministic=True) for r in real
    ]
    assert unknown.value.code() is grpc.StatusCode.INTERNAL
    assert load.statuses == {"OK": 30, "INTERNAL": 1}
    assert len(load.latencies_ms) == load.requests == 31
