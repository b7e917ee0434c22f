"""``realm train retriever`` as a person runs it: a collection of the shared real server is
trained on, the version lands in that server's data directory, and the server offers it."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from realm.app.training.corpus import CollectionPassages
from realm.app.training.staging import EXAMPLES
from realm.app.training.synthetic import ROUND_TRIP_K
from realm.client import Document, RetrieverClient, SearchHit
from realm.retriever.embedder import load_sentence_transformer, weights_fingerprint
from realm.retriever.trained_models import RECORD, models_root, trained_versions
from tests.servers import RetrieverProcess, kill_realm_when_found
from tests.test_cli import realm

pytestmark = pytest.mark.slow

_ANIMALS = ["otter", "heron", "badger", "lynx", "gecko", "walrus", "ibis", "marmot"]
_PLACES = ["the Andes", "Lapland", "Borneo", "the Sahel", "Tasmania", "Patagonia"]
_FOODS = ["clams", "frogs", "beetles", "hares", "moths", "kelp", "seeds", "eels"]
# Few steps: what is tested is the path, not the gain (docs/training.md measures that).
_QUICK = ("--epochs", "1", "--batch-size", "16", "--max-seq-length", "64")


def _corpus() -> tuple[list[Document], dict[str, str], list[tuple[str, str]]]:
    """48 made-up animals, each in one document, and a query that only it answers."""
    documents: list[Document] = []
    queries: dict[str, str] = {}
    qrels: list[tuple[str, str]] = []
    for number in range(48):
        animal, place = _ANIMALS[number % 8], _PLACES[number // 8]
        food = _FOODS[(number * 3) % 8]
        doc_id = f"d{number}"
        documents.append(
            Document(
                doc_id,
                f"The {animal} of {place} feeds mostly on {food}. It hunts at dusk and rests in "
                f"burrows near water. Field guides number it {number}.",
                f"{animal.title()} of {place}",
            )
        )
        queries[f"q{number}"] = f"what does the {animal} of {place} eat"
        qrels.append((f"q{number}", doc_id))
    return documents, queries, qrels


def _write_beir(directory: Path, queries: dict[str, str], qrels: list[tuple[str, str]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for query_id, text in queries.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    rows = "".join(f"{q}\t{d}\t1\n" for q, d in qrels)
    (directory / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8")


@pytest.fixture(scope="module")
def labelled(
    retriever: RetrieverProcess, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """A collection of the shared server and its labelled queries in BEIR files."""
    documents, queries, qrels = _corpus()
    labels = tmp_path_factory.mktemp("labels")
    _write_beir(labels, queries, qrels)
    with RetrieverClient(retriever.target, timeout=120) as client:
        client.create_collection("animals")
        client.upsert("animals", documents)
    return "animals", labels


def _train_args(
    retriever: RetrieverProcess, collection: str, labels: Path, *extra: str
) -> list[str]:
    """``realm train retriever`` on the labelled files, quick, with ``extra`` options."""
    return [
        "train",
        "retriever",
        "--collection",
        collection,
        "--data-dir",
        str(retriever.data_dir),
        "--queries",
        str(labels / "queries.jsonl"),
        "--qrels",
        str(labels / "qrels.tsv"),
        *_QUICK,
        *extra,
    ]


def _train(
    retriever: RetrieverProcess, collection: str, labels: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return realm(*_train_args(retriever, collection, labels, *extra), timeout=600)


def test_labelled_training_makes_a_version_that_the_server_offers(
    retriever: RetrieverProcess, labelled: tuple[str, Path]
) -> None:
    collection, labels = labelled
    done = _train(retriever, collection, labels)
    assert done.returncode == 0, done.stderr
    version = models_root(retriever.data_dir) / "animals-v1"
    record = json.loads((version / RECORD).read_text(encoding="utf-8"))
    assert record["examples"]["count"] == 48
    assert record["examples"]["method"] == "labelled"
    assert record["training"]["steps"] == 3  # 48 examples, 16 a step, one epoch
    assert record["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert record["options"]["merge_weight"] == 0.5
    trained = load_sentence_transformer(str(version))
    base = load_sentence_transformer(record["base_model"])
    assert weights_fingerprint(trained) != weights_fingerprint(base)
    # The model keeps its own passage length for encoding (it trained on 64 tokens).
    assert trained.max_seq_length == base.max_seq_length

    documents, queries, _ = _corpus()
    with RetrieverClient(retriever.target, timeout=300) as client:
        info = client.create_collection("animals-trained", embedding_model="animals-v1")
        assert info.embedding_model == "animals-v1"
        client.upsert("animals-trained", documents)
        hits = client.search("animals-trained", queries["q5"], k=3, mode="dense")
        assert hits[0].doc_id == "d5"

        # The collection trained on can move to its version in place.
        client.create_collection("animals-reindexed")
        client.upsert("animals-reindexed", documents)
    done = realm(
        "reindex",
        "--collection",
        "animals-reindexed",
        "--embedding-model",
        "animals-v1",
        "--target",
        retriever.target,
    )
    assert done.returncode == 0, done.stderr
    assert "now served by animals-v1" in done.stdout
    stats = json.loads(realm("stats", "--json", "--target", retriever.target).stdout)
    assert stats["animals-reindexed"]["embedding_model"] == "animals-v1"
    with RetrieverClient(retriever.target, timeout=300) as client:
        for query in list(queries.values())[:8]:
            made_with_it = client.search("animals-trained", query, k=5, mode="dense")
            moved = client.search("animals-reindexed", query, k=5, mode="dense")
            assert _scored(moved) == _scored(made_with_it)


def _scored(hits: list[SearchHit]) -> list[tuple[str, float]]:
    return [(hit.passage_id, round(hit.score, 5)) for hit in hits]


def test_the_same_seed_makes_the_same_model(
    retriever: RetrieverProcess, labelled: tuple[str, Path]
) -> None:
    collection, labels = labelled
    first = _train(retriever, collection, labels, "--seed", "7")
    second = _train(retriever, collection, labels, "--seed", "7")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    names = [n for n in trained_versions(retriever.data_dir) if n.startswith("animals-")]
    last_two = sorted(names, key=lambda n: int(n.rsplit("-v", 1)[1]))[-2:]
    models = [load_sentence_transformer(str(models_root(retriever.data_dir) / n)) for n in last_two]
    assert weights_fingerprint(models[0]) == weights_fingerprint(models[1])
    vectors = [m.encode(["what does the otter of Lapland eat"]) for m in models]
    np.testing.assert_array_equal(vectors[0], vectors[1])


def test_the_saved_model_is_halfway_between_the_base_and_the_fine_tuned_one(
    retriever: RetrieverProcess, labelled: tuple[str, Path]
) -> None:
    collection, labels = labelled
    before = set(trained_versions(retriever.data_dir))
    for merge_weight in ("0.5", "1"):
        done = _train(retriever, collection, labels, "--seed", "3", "--merge-weight", merge_weight)
        assert done.returncode == 0, done.stderr
    halfway, fine_tuned = sorted(
        (n for n in set(trained_versions(retriever.data_dir)) - before),
        key=lambda n: int(n.rsplit("-v", 1)[1]),
    )
    root = models_root(retriever.data_dir)
    merged = load_sentence_transformer(str(root / halfway)).state_dict()
    alone = load_sentence_transformer(str(root / fine_tuned)).state_dict()
    base = load_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2").state_dict()
    moved = 0
    for name, weights in merged.items():
        if weights.is_floating_point():
            expected = (base[name] + alone[name]) / 2
            np.testing.assert_allclose(weights.numpy(), expected.numpy(), atol=1e-6, err_msg=name)
            moved += not np.array_equal(alone[name].numpy(), base[name].numpy())
    assert moved > 0  # the fine-tuned model is not the base


def test_an_interrupted_training_resumes_from_its_checkpoint(
    retriever: RetrieverProcess, labelled: tuple[str, Path]
) -> None:
    collection, labels = labelled
    root = models_root(retriever.data_dir)
    twice = ("--epochs", "2")
    arguments = _train_args(retriever, collection, labels, *twice, "--checkpoint-steps", "1")
    checkpoint = ".training-animals-v*/checkpoints/checkpoint-2/trainer_state.json"
    staged = kill_realm_when_found(arguments, root, checkpoint)
    assert staged, "no checkpoint appeared"
    name = staged[0].parents[2].name.removeprefix(".training-")
    assert name not in trained_versions(retriever.data_dir)  # not published half-made

    resumed = _train(retriever, collection, labels, *twice, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((root / name / RECORD).read_text(encoding="utf-8"))
    assert record["training"]["resumed_from_checkpoint"] is True
    assert record["training"]["steps"] == 6
    assert not (root / name / "checkpoints").exists()


def test_bad_training_input_exits_2_naming_it(
    retriever: RetrieverProcess, labelled: tuple[str, Path], tmp_path: Path
) -> None:
    collection, labels = labelled
    data_dir = str(retriever.data_dir)
    missing = realm("train", "retriever", "-c", "no-such", "--data-dir", data_dir, "--synthetic")
    assert missing.returncode == 2
    assert "no collection 'no-such'" in missing.stderr

    both = _train(retriever, collection, labels, "--synthetic")
    assert both.returncode == 2
    assert "either --queries and --qrels" in both.stderr

    _, queries, qrels = _corpus()
    few = tmp_path / "few"
    _write_beir(few, queries, qrels[:5])
    too_few = _train(retriever, collection, few)
    assert too_few.returncode == 2
    assert "only 5 (query, relevant passage) pairs" in too_few.stderr
    # Nothing is left behind to be resumed or to take a version number.
    assert not list(models_root(retriever.data_dir).glob(".training-*"))

    no_merge = _train(retriever, collection, labels, "--merge-weight", "0")
    assert no_merge.returncode == 2
    assert "--merge-weight 0.0 must be in (0, 1]" in no_merge.stderr

    nothing = _train(retriever, collection, labels, "--resume")
    assert nothing.returncode == 2
    assert "no interrupted training" in nothing.stderr

    with RetrieverClient(retriever.target, timeout=120) as client:
        client.create_collection("animals-e5", language="fr")
        client.upsert("animals-e5", _corpus()[0][:4])
    fixed = realm("train", "retriever", "-c", "animals-e5", "--data-dir", data_dir, "--synthetic")
    assert fixed.returncode == 2
    assert "cannot be trained" in fixed.stderr


def test_synthetic_training_keeps_only_queries_that_find_their_passage(
    retriever: RetrieverProcess, labelled: tuple[str, Path]
) -> None:
    collection, _ = labelled
    done = realm(
        "train",
        "retriever",
        "--collection",
        collection,
        "--data-dir",
        str(retriever.data_dir),
        "--synthetic",
        "--synthetic-passages",
        "48",
        *_QUICK,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    name = re.search(r"(animals-v\d+)\s+saved in", done.stdout)
    assert name is not None, done.stdout
    version = models_root(retriever.data_dir) / name[1]
    record = json.loads((version / RECORD).read_text(encoding="utf-8"))
    about = record["examples"]
    assert about["method"] == "synthetic"
    assert about["passages_sampled"] == 48
    assert 32 <= about["queries_kept"] == about["count"] <= 48
    # Every kept query finds its own passage among BM25's first ROUND_TRIP_K.
    passages = CollectionPassages.read(retriever.data_dir, collection)
    examples = (version / EXAMPLES).read_text(encoding="utf-8").splitlines()[1:]
    for line in examples:
        example = json.loads(line)
        top = passages.bm25_top(example["query"], ROUND_TRIP_K)
        assert example["positive"] in [passages.texts[row] for row in top]
        assert example["negative"] != example["positive"]
