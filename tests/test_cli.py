"""The ``realm`` command line as a person runs it, against the shared real server."""

import json
import subprocess
import sys
from pathlib import Path

from client import RetrieverClient
from tests.conftest import FIXTURES
from tests.servers import REPO, RetrieverProcess


def realm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "realm.cli.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_ingest_a_folder_reports_refused_files_and_exits_1(
    retriever: RetrieverProcess, collection_name: str
) -> None:
    result = realm(
        "ingest",
        str(FIXTURES / "texts"),
        "--collection",
        collection_name,
        "--target",
        retriever.target,
    )
    assert result.returncode == 1
    assert "2 inserted" in result.stdout
    assert "refused empty.txt: the file is empty" in result.stdout
    assert "1 document(s) refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_ingest_jsonl_then_search_as_json(
    retriever: RetrieverProcess, collection_name: str
) -> None:
    target = ("--target", retriever.target)
    ingested = realm(
        "ingest", str(FIXTURES / "corpus.jsonl"), "--collection", collection_name, *target
    )
    assert ingested.returncode == 0, ingested.stderr
    assert "12 inserted" in ingested.stdout

    found = realm(
        "search",
        "volcanic ash and lava",
        "--collection",
        collection_name,
        "--json",
        "-k",
        "2",
        *target,
    )
    assert found.returncode == 0, found.stderr
    results = json.loads(found.stdout)["results"]
    assert len(results) == 2
    assert results[0]["doc_id"] == "volcano"
    assert {"doc_id", "passage_id", "score", "text"} <= set(results[0])

    table = realm(
        "search", "volcanic ash", "--collection", collection_name, "--mode", "bm25", *target
    )
    assert table.returncode == 0
    assert "volcano" in table.stdout


def test_user_errors_print_one_line_without_traceback(retriever: RetrieverProcess) -> None:
    result = realm("search", "x", "--collection", "missing", "--target", retriever.target)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: NOT_FOUND: collection 'missing' does not exist")
    assert "Traceback" not in result.stderr
    bad_mode = realm(
        "search", "x", "--collection", "c", "--mode", "fuzzy", "--target", retriever.target
    )
    assert bad_mode.returncode == 2
    assert "--mode 'fuzzy' is unknown" in bad_mode.stderr


def test_eval_retrieval_ingests_an_empty_collection_and_writes_metrics(
    retriever: RetrieverProcess, collection_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "metrics.json"
    beir = str(FIXTURES / "mini_beir")
    args = (
        "--beir",
        beir,
        "--collection",
        collection_name,
        "--mode",
        "bm25",
        "--json",
        str(out),
        "--target",
        retriever.target,
    )
    result = realm("eval", "retrieval", *args)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"ndcg@10", "recall@100", "mrr@10", "queries"}
    assert metrics["queries"] == 3
    assert metrics["mrr@10"] == 1.0  # each query's judged document is unmistakable
    with RetrieverClient(retriever.target) as client:
        assert client.stats(collection_name)[0].documents == 4  # the empty document is skipped
    again = realm("eval", "retrieval", *args)  # a second run reuses the collection
    assert again.returncode == 0
    assert json.loads(out.read_text()) == metrics


def test_no_client_can_reach_a_dead_target() -> None:
    result = realm("search", "x", "--collection", "c", "--target", "127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.startswith("error: UNAVAILABLE")
