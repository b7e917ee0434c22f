"""The ``realm`` command line as a person runs it, against the shared real server."""

import json
import subprocess
import sys
from pathlib import Path

from realm.app.supervisor import free_port
from realm.client import RetrieverClient
from tests.conftest import FIXTURES
from tests.servers import REPO, GeneratorProcess, RetrieverProcess


def realm(
    *args: str, timeout: float = 300, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "realm.app.cli.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=stdin,
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


def test_ask_streams_the_answer_then_numbered_sources(
    generator: GeneratorProcess, answer_collection: str
) -> None:
    result = realm(
        "ask",
        "When was the Eiffel Tower completed?",
        "-c",
        answer_collection,
        "--target",
        generator.target,
        "-k",
        "2",
        "--max-new-tokens",
        "40",
    )
    assert result.returncode == 0, result.stderr
    answer, _, sources = result.stdout.partition("Sources")
    assert "1889" in answer
    assert "[1] Eiffel Tower cited" in sources


def test_ask_json_prints_the_final_response_with_stable_keys(
    generator: GeneratorProcess, answer_collection: str
) -> None:
    result = realm(
        "ask",
        "When was the Eiffel Tower completed?",
        "-c",
        answer_collection,
        "--target",
        generator.target,
        "-k",
        "2",
        "--max-new-tokens",
        "40",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert {"answer", "sources", "timings"} <= set(payload)
    first = payload["sources"][0]
    assert {"doc_id", "citation", "score", "start", "end", "text"} <= set(first)
    assert (first["doc_id"], first["citation"], first["cited"]) == ("eiffel", 1, True)
    assert payload["timings"]["total"] >= payload["timings"]["retrieval"] > 0


def test_ask_with_bad_parameters_prints_one_line(generator: GeneratorProcess) -> None:
    result = realm(
        "ask", "Why?", "-c", "answers", "--target", generator.target, "--temperature", "9"
    )
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "parameters.temperature" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_qa_reports_squad_scores(
    generator: GeneratorProcess, answer_collection: str, tmp_path: Path
) -> None:
    out = tmp_path / "qa.json"
    answers = tmp_path / "answers.jsonl"
    result = realm(
        "eval",
        "qa",
        "--questions",
        str(FIXTURES / "qa" / "questions.jsonl"),
        "-c",
        answer_collection,
        "--target",
        generator.target,
        "--k",
        "3",
        "--json",
        str(out),
        "--out",
        str(answers),
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())
    assert set(scores) == {
        "em",
        "f1",
        "contains",
        "gold_retrieved",
        "citation_precision",
        "supported",
        "questions",
        "median_seconds",
        "families",
    }
    assert scores["questions"] == 4
    assert scores["contains"] >= 0.5  # the packaged 135M model gets most of these
    assert 0 < scores["f1"] <= 1
    assert scores["gold_retrieved"] == 1.0  # three questions name their document; k=3 finds it
    assert 0 < scores["median_seconds"] < 300
    assert {f: s["questions"] for f, s in scores["families"].items()} == {"city": 2, "year": 1}
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["id"] for r in records] == ["q1", "q2", "q3", "q4"]
    assert records[3]["scores"]["gold_retrieved"] is None  # q4 names no gold document
    assert all(len(r["sources"]) <= 3 and r["answer"] for r in records)
    assert "city" in result.stdout


def test_eval_qa_refuses_a_malformed_question_file(
    generator: GeneratorProcess, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "question": "Why?"}\n')
    result = realm(
        "eval", "qa", "--questions", str(bad), "-c", "answers", "--target", generator.target
    )
    assert result.returncode == 2
    assert "bad.jsonl:1" in result.stderr
    assert "answers" in result.stderr


def test_ask_extract_prints_exactly_the_requested_fields_as_json(
    generator: GeneratorProcess, answer_collection: str
) -> None:
    result = realm(
        "ask",
        "Eiffel Tower",
        "-c",
        answer_collection,
        "--target",
        generator.target,
        "--task",
        "extract",
        "--field",
        "city",
        "--field",
        "year",
        "-k",
        "2",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert list(payload["fields"]) == ["city", "year"]
    assert "Paris" in payload["fields"]["city"]


def test_chat_answers_each_line_until_end_of_input(
    generator: GeneratorProcess, answer_collection: str
) -> None:
    result = realm(
        "chat",
        "-c",
        answer_collection,
        "--target",
        generator.target,
        "-k",
        "2",
        stdin="When was the Eiffel Tower completed?\n\n",
    )
    assert result.returncode == 0, result.stderr
    assert "1889" in result.stdout
    assert "Sources" in result.stdout


def test_health_is_the_probe_exit_code(retriever: RetrieverProcess) -> None:
    serving = realm("health", "--target", retriever.target)
    assert (serving.returncode, serving.stdout.strip()) == (0, f"{retriever.target}: SERVING")
    nobody = realm("health", "--target", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert nobody.returncode == 1
    assert "UNAVAILABLE" in nobody.stderr or "DEADLINE_EXCEEDED" in nobody.stderr
