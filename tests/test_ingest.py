"""A large ingest in acknowledged batches: a server killed mid-way costs nothing but a pause,
and an ingest that cannot go on says how many documents are durable."""

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from realm.client import AsyncRealmClient, Document, IngestInterrupted, RetrieverClient, Unavailable
from tests.servers import RetrieverProcess

pytestmark = pytest.mark.slow

BATCH = 10


def _documents(count: int) -> list[Document]:
    return [Document(f"d{i}", f"Record {i}: marker{i} notes on ingest.") for i in range(count)]


def test_ingest_goes_on_through_a_server_restart_and_reports_where_it_stopped(
    tmp_path: Path,
) -> None:
    server = RetrieverProcess(tmp_path / "data")
    batches: list[int] = []

    def kill_and_restart_after_the_second_batch(size: int) -> None:
        batches.append(size)
        if len(batches) == 2:
            server.signal(signal.SIGKILL)
            server.wait()
            server.start()  # back in a few seconds; meanwhile the third batch is refused

    with server, RetrieverClient(server.target, timeout=30) as client:
        client.create_collection("resume")
        summary = client.ingest(
            "resume",
            _documents(6 * BATCH),
            batch_size=BATCH,
            progress=kill_and_restart_after_the_second_batch,
        )
        server.wait_serving()
        assert batches == [BATCH] * 6
        assert (summary.inserted, summary.replaced) == (6 * BATCH, 0)
        assert client.stats("resume")[0].documents == 6 * BATCH
        hits = client.search("resume", "marker25", mode="bm25", k=1)
        assert [hit.doc_id for hit in hits] == ["d25"]

        batches.clear()
        server.signal(signal.SIGKILL)  # and this time it stays down
        server.wait()
        with pytest.raises(IngestInterrupted) as interrupted:
            client.ingest(
                "resume",
                _documents(3 * BATCH),
                batch_size=BATCH,
                attempts=2,
                max_pause_s=0.1,
            )
    assert interrupted.value.acknowledged == 0
    assert isinstance(interrupted.value.cause, Unavailable)
    assert "skip them to resume" in str(interrupted.value)


async def test_the_asyncio_client_ingests_through_a_restart_too(tmp_path: Path) -> None:
    server = RetrieverProcess(tmp_path / "data")
    batches: list[int] = []

    def kill_and_restart_after_the_first_batch(size: int) -> None:
        batches.append(size)
        if len(batches) == 1:
            server.signal(signal.SIGKILL)
            server.wait()
            server.start()

    async def documents() -> AsyncIterator[Document]:  # an async source, as a crawler would be
        for document in _documents(4 * BATCH):
            yield document

    with server:
        async with AsyncRealmClient(retriever=server.target) as realm:
            await realm.create_collection("resume")
            summary = await realm.ingest(
                "resume",
                documents(),
                batch_size=BATCH,
                progress=kill_and_restart_after_the_first_batch,
            )
        server.wait_serving()
        with RetrieverClient(server.target) as client:
            assert client.stats("resume")[0].documents == 4 * BATCH
    assert batches == [BATCH] * 4
    assert summary.inserted == 4 * BATCH
