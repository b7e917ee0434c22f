"""``realm train retriever`` measured as a user runs it: a real retriever, the real command, and
``realm eval``'s figures before and after.

Cranfield's judged queries are split once (sorted by id: the 1st, 3rd, 5th... train, the others
evaluate). The base collection is trained on with the training half's labels, and with synthetic
queries only; each version indexes Cranfield into a new collection, evaluated on the other half.
A control set the training never saw (English Wikipedia known-item queries, bench.wiki_beir)
shows what the adaptation costs elsewhere. Time and peak memory are the training command's own.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import wiki_beir
from bench.common import Row
from realm.app.beir import read_corpus, read_qrels, read_queries
from realm.app.evaluation import evaluate_retrieval
from realm.app.supervisor import ServiceProcess
from realm.client import Document, Mode, RetrieverClient

CRANFIELD = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cranfield"
REPO = Path(__file__).resolve().parent.parent
# The bars of the fine-tuning issue, in nDCG@10 on the evaluation half.
SUPERVISED_GAIN = 0.03
SYNTHETIC_GAIN = 0.01


@dataclass(frozen=True, slots=True)
class Training:
    version: str
    seconds: float
    peak_rss_mib: float


def split(cranfield: Path, out: Path) -> tuple[Path, Path]:
    """Writes the training half (queries.jsonl, qrels.tsv) and the evaluation half (a BEIR
    folder) under ``out``."""
    queries = read_queries(cranfield / "queries.jsonl")
    qrels = read_qrels(cranfield / "qrels" / "test.tsv")
    judged = sorted((q for q in qrels if q in queries), key=int)
    halves = {"train": judged[0::2], "eval": judged[1::2]}
    paths: dict[str, Path] = {}
    for half, ids in halves.items():
        directory = out / half
        (directory / "qrels").mkdir(parents=True)
        with (directory / "queries.jsonl").open("w", encoding="utf-8") as handle:
            for query_id in ids:
                handle.write(json.dumps({"_id": query_id, "text": queries[query_id]}) + "\n")
        rows = [f"{q}\t{d}\t{g}\n" for q in ids for d, g in sorted(qrels[q].items())]
        (directory / "qrels" / "test.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(rows), encoding="utf-8"
        )
        (directory / "corpus.jsonl").symlink_to(cranfield / "corpus.jsonl")
        paths[half] = directory
    return paths["train"], paths["eval"]


def train(data_dir: Path, collection: str, *args: str) -> Training:
    """Runs ``realm train retriever``; its own wall time and peak resident memory."""
    command = [sys.executable, "-m", "realm.app.cli.main", "train", "retriever"]
    log = data_dir.parent / f"train-{collection}-{time.monotonic_ns()}.log"
    started = time.monotonic()
    with log.open("w+", encoding="utf-8") as output:
        process = subprocess.Popen(
            [*command, "--collection", collection, "--data-dir", str(data_dir), *args],
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        # wait4, not wait: the rusage of this child alone (the server is a child too).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    text = log.read_text(encoding="utf-8")
    found = re.search(r"(\S+-v\d+)\s+saved in", text)
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"realm train retriever failed ({process.returncode}): {text[-3000:]}")
    return Training(found[1], seconds, usage.ru_maxrss / 1024)


def index(client: RetrieverClient, collection: str, corpus: Path, model: str = "") -> None:
    client.create_collection(collection, embedding_model=model)
    documents = [  # two of Cranfield's abstracts are empty: realm ingest refuses them too
        Document(d.doc_id, d.text, d.title)
        for d in read_corpus(corpus / "corpus.jsonl")
        if d.text.strip()
    ]
    client.upsert(collection, documents)


def ndcg(client: RetrieverClient, collection: str, beir: Path, mode: Mode) -> float:
    return evaluate_retrieval(client, collection, beir, mode)["ndcg@10"]


def run(quick: bool) -> list[Row]:
    if not (CRANFIELD / "corpus.jsonl").is_file():
        raise SystemExit(f"{CRANFIELD} is missing: the training benchmark needs Cranfield")
    epochs = ["--epochs", "0.25"] if quick else []
    synthetic_passages = "64" if quick else "400"
    with tempfile.TemporaryDirectory(prefix="realm-train-bench-") as temporary:
        root = Path(temporary)
        train_half, eval_half = split(CRANFIELD, root / "split")
        control = root / "wiki"
        wiki_beir.write(control, every=50 if quick else 10)
        data_dir = root / "data"
        server = ServiceProcess("retriever", root / "retriever.log", "--data-dir", str(data_dir))
        with server, RetrieverClient(server.target, timeout=3600) as client:
            index(client, "cranfield", eval_half)
            index(client, "wiki", control)
            figures: dict[str, dict[str, float]] = {
                "base": _figures(client, "cranfield", "wiki", eval_half, control)
            }
            runs = {
                "supervised": train(
                    data_dir,
                    "cranfield",
                    "--queries",
                    str(train_half / "queries.jsonl"),
                    "--qrels",
                    str(train_half / "qrels" / "test.tsv"),
                    *epochs,
                ),
                "synthetic": train(
                    data_dir,
                    "cranfield",
                    "--synthetic",
                    "--synthetic-passages",
                    synthetic_passages,
                    *epochs,
                ),
            }
            for name, trained in runs.items():
                index(client, f"cranfield-{name}", eval_half, trained.version)
                index(client, f"wiki-{name}", control, trained.version)
                figures[name] = _figures(
                    client, f"cranfield-{name}", f"wiki-{name}", eval_half, control
                )
    return _rows(figures, runs)


def _figures(
    client: RetrieverClient, cranfield: str, wiki: str, eval_half: Path, control: Path
) -> dict[str, float]:
    return {
        "dense": ndcg(client, cranfield, eval_half, "dense"),
        "hybrid": ndcg(client, cranfield, eval_half, "hybrid"),
        "control": ndcg(client, wiki, control, "dense"),
    }


def _rows(figures: dict[str, dict[str, float]], runs: dict[str, Training]) -> list[Row]:
    base = figures["base"]
    rows: list[Row] = []
    for name, gain in (("supervised", SUPERVISED_GAIN), ("synthetic", SYNTHETIC_GAIN)):
        after, trained = figures[name], runs[name]
        note = (
            f"{trained.version}: {trained.seconds / 60:.1f} min, "
            f"peak {trained.peak_rss_mib:,.0f} MiB"
        )
        rows += [
            Row(
                f"Cranfield eval half, dense nDCG@10, {name}",
                after["dense"],
                "the base model",
                base["dense"],
                "nDCG@10",
                (base["dense"] + gain) / base["dense"],
                note=f"bar: +{gain} nDCG@10; {note}",
            ),
            Row(
                f"Cranfield eval half, hybrid nDCG@10, {name}",
                after["hybrid"],
                "the base model",
                base["hybrid"],
                "nDCG@10",
                None,
            ),
            Row(
                f"control (Wikipedia known-item), dense nDCG@10, {name}",
                after["control"],
                "the base model",
                base["control"],
                "nDCG@10",
                1.0,
                note="no loss on a collection it was not trained for",
            ),
        ]
    return rows
