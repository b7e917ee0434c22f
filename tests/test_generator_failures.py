"""The generator when its retriever is slow, overloaded with callers, or killed.

A stand-in retriever process (``tests/stub_retriever.py``: real gRPC, scripted delay) sits on a
fixed port in front of a second generator process, so the tests can slow it down and kill it
without disturbing the shared servers.
"""

import time
from collections.abc import Iterator

import pytest

from realm.app.supervisor import free_port
from realm.channels import ConnectionOptions
from realm.client import (
    Answer,
    AskOptions,
    DeadlineExceeded,
    GeneratorClient,
    ResourceExhausted,
    Unavailable,
)
from tests.servers import GeneratorProcess, StubRetriever

pytestmark = pytest.mark.slow
QUESTION = "When was the Eiffel Tower completed?"
# How far a deadline passed through gRPC hops may overshoot the caller's (a deadline not
# passed on would be the generator's own --retrieval-timeout, 10 s).
DEADLINE_SLACK_S = 0.05


def _ask_once_the_retriever_is_back(client: GeneratorClient) -> Answer:
    """A restarted retriever is found within the generator's reconnect backoff (<= 1 s)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return client.ask(QUESTION, "any", max_new_tokens=24)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubRetriever]:
    retriever = StubRetriever(free_port(), tmp_path_factory.mktemp("stub"))
    yield retriever
    retriever.kill()


@pytest.fixture(scope="module")
def lonely_generator(
    stub: StubRetriever, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GeneratorProcess]:
    with GeneratorProcess(
        tmp_path_factory.mktemp("lonely-generator"),
        f"127.0.0.1:{stub.port}",
        "--max-pending-requests",
        "2",
        "--max-batch-size",
        "2",
    ) as server:
        yield server


def test_caller_deadline_reaches_the_retriever_and_expires_promptly(
    stub: StubRetriever, lonely_generator: GeneratorProcess
) -> None:
    stub.start(delay=5.0)
    try:
        with GeneratorClient(lonely_generator.target, timeout=1.0) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                client.ask(QUESTION, "any")
            assert time.monotonic() - started < 2.0
        seen = stub.deadlines_seen()
        assert seen, "the retriever was never called"
        # Each hop re-reads the deadline from a relative grpc-timeout header against its own
        # clock, so the stub may see a few ms more than the caller's 1 s (1.009 s once, on a
        # loaded CI machine).
        assert all(0 < remaining <= 1.0 + DEADLINE_SLACK_S for remaining in seen), seen
    finally:
        stub.kill()


def test_past_the_pending_limit_callers_get_resource_exhausted_at_once(
    stub: StubRetriever, lonely_generator: GeneratorProcess
) -> None:
    stub.start(delay=0.0)
    try:
        essay = "Write a very long essay about towers."
        long_answer = AskOptions(
            max_new_tokens=400, stop=["\u2603"], style="sentence", grounding="free"
        )
        with GeneratorClient(lonely_generator.target, timeout=120) as client:
            _ask_once_the_retriever_is_back(client)
            streams = [client.ask_stream(essay, "any", **long_answer) for _ in range(2)]
            for stream in streams:
                assert isinstance(next(stream), str)  # both admitted and generating
            started = time.monotonic()
            with pytest.raises(ResourceExhausted, match="max_pending_requests"):
                client.ask(essay, "any", **long_answer)
            assert time.monotonic() - started < 1.0
            for stream in streams:
                stream.close()
    finally:
        stub.kill()


def test_killed_retriever_gives_unavailable_within_a_second_or_a_flagged_answer(
    stub: StubRetriever, lonely_generator: GeneratorProcess
) -> None:
    stub.start(delay=0.0)
    with GeneratorClient(
        lonely_generator.target, timeout=120, options=ConnectionOptions(max_attempts=1)
    ) as client:
        working = _ask_once_the_retriever_is_back(client)
        assert working.context_used
        stub.kill()
        started = time.monotonic()
        with pytest.raises(Unavailable, match="retriever"):
            client.ask(QUESTION, "any", max_new_tokens=24)
        assert time.monotonic() - started < 1.0
        flagged = client.ask(QUESTION, "any", max_new_tokens=24, allow_no_context=True)
        assert not flagged.context_used
        assert "retrieval failed" in flagged.no_context_reason
        assert flagged.sources == []
        assert flagged.text
