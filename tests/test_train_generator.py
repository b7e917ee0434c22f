"""``realm train generator`` as a person runs it: the reader is trained on a collection of the
shared real server (killed mid-way and resumed), and a real generator serves the result."""

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from realm.app.training.cloze import cloze_questions
from realm.app.training.corpus import CollectionPassages
from realm.app.training.reading import QAPair, labelled_reading
from realm.app.training.staging import EXAMPLES
from realm.client import Document, GeneratorClient, RetrieverClient
from realm.generator.models import resolve
from realm.generator.settings import ModelSettings
from realm.generator.spans import REFUSAL
from tests.servers import GeneratorProcess, RetrieverProcess, kill_realm_when_found
from tests.test_cli import realm

_TOWNS = ["Varno", "Elsby", "Quenth", "Morrow", "Tavel", "Brisk", "Olden", "Pellam"]
_PROVINCES = ["Eldra", "Kostova", "Amberlund", "Sarnia", "Velloria", "Durmark"]
_FOUNDERS = ["Marek Olsen", "Ida Brandt", "Tomas Vell", "Greta Holm"]
_RIVERS = ["Tallow", "Wren", "Ashby", "Corran", "Lune", "Mirk"]


def _towns() -> list[Document]:
    """48 made-up towns: names, places, years and numbers only these documents state."""
    documents = []
    for number in range(48):
        town = f"{_TOWNS[number % 8]}{'ham' if number >= 8 else ''}{number // 8 or ''}"
        province, founder = _PROVINCES[number // 8], _FOUNDERS[number % 4]
        text = (
            f"{town} is a market town in the province of {province}. It was founded in "
            f"{1600 + 7 * number} by {founder}. The town lies on the River "
            f"{_RIVERS[number % 6]} and had {1200 + 37 * number} inhabitants at the last count."
        )
        documents.append(Document(f"t{number}", text, town))
    return documents


@pytest.fixture(scope="module")
def towns(retriever: RetrieverProcess) -> str:
    with RetrieverClient(retriever.target, timeout=120) as client:
        client.create_collection("towns")
        client.upsert("towns", _towns())
    return "towns"


def _train_args(retriever: RetrieverProcess, output: Path, *extra: str) -> list[str]:
    # 32 examples in 4 steps: what is tested is the path, not the gain (docs/training.md).
    return [
        "train",
        "generator",
        "--collection",
        "towns",
        "--data-dir",
        str(retriever.data_dir),
        "--output",
        str(output),
        "--examples",
        "32",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)  # three trainings (killed, resumed, again) and a server
def test_a_resumed_training_makes_the_uninterrupted_model_and_the_generator_serves_it(
    retriever: RetrieverProcess, towns: str, tmp_path: Path
) -> None:
    output = tmp_path / "reader"
    checkpoint = ".training-reader/checkpoints/checkpoint-2/trainer_state.json"
    arguments = _train_args(retriever, output, "--checkpoint-steps", "1")
    assert kill_realm_when_found(arguments, tmp_path, checkpoint), "no checkpoint appeared"
    assert not output.exists()  # never published half-made

    resumed = realm(*_train_args(retriever, output, "--resume"), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((output / "training.json").read_text(encoding="utf-8"))
    assert record["training"]["resumed_from_checkpoint"] is True
    assert record["training"]["steps"] == 4  # 32 examples, 8 a step
    assert record["examples"]["count"] == 32
    assert record["examples"]["refusals"] >= 1
    assert not (output / "checkpoints").exists()

    # Every answer is copied from its passage (or its title), or is the refusal.
    for line in (output / EXAMPLES).read_text(encoding="utf-8").splitlines()[1:]:
        example = json.loads(line)
        copied = example["answer"] in example["passage"] or example["answer"] == example["title"]
        assert copied or example["answer"] == REFUSAL, example

    # LoRA was merged into the weights: the saved model differs from the base.
    base, _ = resolve(ModelSettings().name_or_path, ModelSettings().cache_dir)
    name = "model.layers.0.self_attn.q_proj.weight"
    with (
        safe_open(str(output / "model.safetensors"), "pt") as trained,
        safe_open(str(Path(base) / "model.safetensors"), "pt") as original,
    ):
        assert not trained.get_tensor(name).equal(original.get_tensor(name))

    # Seeded and reproducible: a run with the same seed that nobody interrupted makes the same
    # weights as the killed and resumed one.
    again = tmp_path / "again"
    uninterrupted = realm(*_train_args(retriever, again), timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    with (
        safe_open(str(output / "model.safetensors"), "pt") as resumed_weights,
        safe_open(str(again / "model.safetensors"), "pt") as again_weights,
    ):
        names = resumed_weights.keys()  # a safetensors handle is not iterable
        assert sorted(names) == sorted(again_weights.keys())
        for key in names:
            assert resumed_weights.get_tensor(key).equal(again_weights.get_tensor(key)), key

    with (
        GeneratorProcess(tmp_path, retriever.target, "--model", str(output)) as server,
        GeneratorClient(server.target, timeout=300) as client,
    ):
        answer = client.ask("Which province is Varno in?", towns)
    assert answer.model == str(output)
    # Strict grounding: what the trained reader answers is a span of the passage it cites.
    cited = [source for source in answer.sources if source.cited]
    assert answer.answered, answer
    assert cited, answer
    assert answer.text in f"{cited[0].title}: {cited[0].text}"


def test_bad_generator_training_input_exits_2_naming_it(
    retriever: RetrieverProcess, towns: str, tmp_path: Path
) -> None:
    data_dir = str(retriever.data_dir)
    missing = realm(
        "train", "generator", "-c", "no-such", "--data-dir", data_dir, "--output", str(tmp_path)
    )
    assert missing.returncode == 2
    assert "no collection 'no-such'" in missing.stderr

    exists = realm(*_train_args(retriever, tmp_path))
    assert exists.returncode == 2
    assert "already exists" in exists.stderr

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "Where is Varno?", "answers": ["Eldra"]}\n{"q": 1}\n')
    unreadable = realm(*_train_args(retriever, tmp_path / "a", "--questions", str(broken)))
    assert unreadable.returncode == 2
    assert "broken.jsonl line 2" in unreadable.stderr

    few = tmp_path / "few.jsonl"
    few.write_text('{"question": "Where is Varno?", "answers": ["Eldra"]}\n' * 3)
    too_few = realm(*_train_args(retriever, tmp_path / "b", "--questions", str(few)))
    assert too_few.returncode == 2
    assert "only 3 reading examples" in too_few.stderr
    assert not list(tmp_path.glob(".training-*"))  # nothing left behind to resume

    nothing = realm(*_train_args(retriever, tmp_path / "c", "--resume"))
    assert nothing.returncode == 2
    assert "no interrupted training" in nothing.stderr


def test_labelled_examples_read_the_passage_that_holds_the_answer(
    retriever: RetrieverProcess, towns: str
) -> None:
    passages = CollectionPassages.read(retriever.data_dir, towns)
    pairs = [
        QAPair("Who founded Elsby?", ("ida brandt",)),
        QAPair("When was Quenth founded?", ("1614",)),
        QAPair("Which river does Morrow lie on?", ("Thames",)),  # not in the collection
    ]
    made = labelled_reading(passages, pairs * 16, refusal_share=0.0, seed=0, minimum=1)
    assert made.unmatched == 16
    first, second = made.examples[0], made.examples[1]
    assert (first.title, first.answer) == ("Elsby", "Ida Brandt")  # as the passage writes it
    assert (second.title, second.answer) == ("Quenth", "1614")

    refused = labelled_reading(passages, pairs[:1] * 8, refusal_share=0.9, seed=0, minimum=1)
    misses = [example for example in refused.examples if example.answer == REFUSAL]
    assert misses
    assert all("Ida Brandt" not in example.passage for example in misses)


def test_cloze_questions_ask_for_spans_of_the_passage() -> None:
    text = (
        "Kabul is the capital and largest city of Afghanistan. It was founded in 1504 by "
        "Babur. The city had 4,601,789 inhabitants in 2020, and it is an Italian word."
    )
    made = {(q.question, q.answer) for q in cloze_questions("Kabul", text)}
    assert ("What is the capital and largest city of Afghanistan?", "Kabul") in made
    assert ("Kabul is the capital and largest city of what?", "Afghanistan") in made
    assert ("Kabul was founded when by Babur?", "1504") in made
    assert ("The city had how many inhabitants in 2020?", "4,601,789") in made
    # A name used as an adjective, or the title itself, is not a gap.
    assert not any(answer in ("Italian", "Kabul") for q, answer in made if "what?" in q)
    for _, answer in made:
        assert answer in text
