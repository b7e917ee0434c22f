"""A stand-in retriever process for the generator's failure tests: real gRPC, scripted answers.

It answers ``Search`` with one fixed passage after ``--delay`` seconds and appends the time the
caller left it (``context.time_remaining()``) to ``--record``, so a test can check the deadline
the generator passed on. Run as ``python -m tests.stub_retriever``; tests kill it with signals.
"""

import argparse
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from realm.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc

PASSAGE = "The Eiffel Tower in Paris was completed in 1889 for the World's Fair."


class SlowRetriever(retriever_pb2_grpc.RetrieverServiceServicer):
    def __init__(self, delay: float, record: Path) -> None:
        self.delay = delay
        self.record = record

    def Search(  # noqa: N802 -- gRPC method name
        self, request: retriever_pb2.SearchRequest, context: Any
    ) -> retriever_pb2.SearchResponse:
        remaining = context.time_remaining()
        with self.record.open("a", encoding="utf-8") as handle:
            handle.write(f"{remaining if remaining is not None else 'none'}\n")
        time.sleep(self.delay)
        passage = common_pb2.Passage(
            passage_id="eiffel#0", doc_id="eiffel", text=PASSAGE, start=0, end=len(PASSAGE)
        )
        return retriever_pb2.SearchResponse(
            hits=[retriever_pb2.SearchHit(passage=passage, score=1.0, title="Eiffel Tower")]
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--record", type=Path, required=True)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(
        SlowRetriever(args.delay, args.record),  # type: ignore[abstract]  # only Search is served
        server,
    )
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    args.record.with_suffix(".ready").touch()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
