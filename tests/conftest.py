"""Shared, expensive fixtures: one model of each kind per process, one server of each per run."""

import errno
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import LlamaConfig

from realm.client import Document, GeneratorClient, RetrieverClient
from realm.generator.models import LoadedModel, load_model
from realm.generator.settings import ModelSettings
from realm.retriever.embedder import SentenceTransformerEncoder, torch_encoder
from tests.servers import GeneratorProcess, RetrieverProcess

FIXTURES = Path(__file__).parent / "fixtures"
CRANFIELD = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cranfield"


def fixture_documents() -> list[Document]:
    """The small hand-written corpus the project's own tests use (English and Chinese)."""
    with (FIXTURES / "corpus.jsonl").open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [Document(r["id"], r["text"], r["title"], r["metadata"]) for r in rows]


def tiny_llama_config(
    vocab_size: int,
    max_positions: int,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> LlamaConfig:
    """A two-layer Llama with grouped-query attention (4 query heads over 2 key/value heads),
    small enough to build with random weights in milliseconds."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )


@pytest.fixture(scope="session")
def encoder() -> SentenceTransformerEncoder:
    """The packaged default model, loaded once for every in-process test."""
    return torch_encoder()


@pytest.fixture(scope="session")
def cranfield() -> Path:
    if not (CRANFIELD / "corpus.jsonl").exists():
        pytest.skip("../shared/data/cranfield is not present")
    return CRANFIELD


@pytest.fixture(scope="session")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetrieverProcess]:
    """One real retriever process for the whole run; tests use their own collections."""
    data_dir = tmp_path_factory.mktemp("shared-retriever") / "data"
    with RetrieverProcess(data_dir, "--reflection") as server:
        yield server


@pytest.fixture(scope="session")
def generator(
    retriever: RetrieverProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GeneratorProcess]:
    """One real generator process with the packaged default model, calling ``retriever``."""
    with GeneratorProcess(tmp_path_factory.mktemp("generator"), retriever.target) as server:
        yield server


@pytest.fixture(scope="session")
def answer_collection(retriever: RetrieverProcess) -> str:
    """The fixture corpus in one collection shared by the generator tests (read-only)."""
    with RetrieverClient(retriever.target, timeout=120) as connected:
        connected.create_collection("answers")
        connected.upsert("answers", fixture_documents())
    return "answers"


@pytest.fixture
def generator_client(generator: GeneratorProcess) -> Iterator[GeneratorClient]:
    with GeneratorClient(generator.target, timeout=300) as connected:
        yield connected


@pytest.fixture(scope="session")
def default_generator() -> LoadedModel:
    """The packaged default generator loaded in the test process, for in-process engine tests."""
    return load_model(ModelSettings())


@pytest.fixture
def client(retriever: RetrieverProcess) -> Iterator[RetrieverClient]:
    with RetrieverClient(retriever.target, timeout=120) as connected:
        yield connected


@pytest.fixture
def collection_name(request: pytest.FixtureRequest) -> str:
    """A collection name unique to the test."""
    return ("t-" + re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name))[:64]


@pytest.fixture
def fixture_collection(client: RetrieverClient, collection_name: str) -> str:
    client.create_collection(collection_name)
    client.upsert(collection_name, fixture_documents())
    return collection_name


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs of our own, so 'disk full' and 'read-only' are real (root ignores chmod)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_disk(directory: Path) -> Path:
    """Fills the file system of ``directory`` until writes fail with ENOSPC."""
    filler = directory / "filler"
    failure: int | None = None
    with filler.open("wb") as handle:
        while failure is None:
            try:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
            except OSError as error:
                failure = error.errno
    assert failure == errno.ENOSPC
    return filler


def flip_byte(path: Path, offset: int) -> None:
    """Corrupts one byte of ``path`` in place, as a bad disk sector or a stray write would."""
    payload = bytearray(path.read_bytes())
    payload[offset] ^= 0xFF
    path.write_bytes(bytes(payload))
