"""``python -m bench.transport_floor serve retriever --port N --responses FILE``: the gRPC floor.

A retriever server that does no search: ``Search`` answers the response prepared for its query
text, read at start-up from FILE (a serialised ``BatchSearchResponse`` whose ``responses`` follow
the queries in a ``BatchSearchRequest`` stored beside it). Everything else is the real serving
stack: ``realm.server`` with its options, interceptors and health service. Its queries/s is what
grpc, the interceptor and the load generator allow on the machine before any search runs, so the
gRPC benchmark can show how much of a search call's time is transport.
"""

import argparse
import asyncio
from pathlib import Path
from typing import Any

from grpc import aio

from realm.retriever.servicer import SERVICE_NAME
from realm.server import ServerOptions, start_server
from realm.v1 import retriever_pb2, retriever_pb2_grpc

QUERIES_SUFFIX = ".queries"


def save_responses(
    path: Path,
    requests: list[retriever_pb2.SearchRequest],
    responses: list[retriever_pb2.SearchResponse],
) -> None:
    """Writes the prepared answers: ``path`` the responses, ``path.queries`` the requests."""
    path.write_bytes(retriever_pb2.BatchSearchResponse(responses=responses).SerializeToString())
    queries = path.with_suffix(QUERIES_SUFFIX)
    queries.write_bytes(retriever_pb2.BatchSearchRequest(requests=requests).SerializeToString())


class PreparedAnswers(retriever_pb2_grpc.RetrieverServiceServicer):
    def __init__(self, answers: dict[str, retriever_pb2.SearchResponse]) -> None:
        self.answers = answers

    async def Search(  # noqa: N802 -- gRPC method names are PascalCase
        self, request: retriever_pb2.SearchRequest, context: aio.ServicerContext[Any, Any]
    ) -> retriever_pb2.SearchResponse:
        return self.answers[request.query]


async def _serve(port: int, responses: Path) -> None:
    batch = retriever_pb2.BatchSearchResponse.FromString(responses.read_bytes())
    queries = retriever_pb2.BatchSearchRequest.FromString(
        responses.with_suffix(QUERIES_SUFFIX).read_bytes()
    )
    answers = {r.query: a for r, a in zip(queries.requests, batch.responses, strict=True)}
    # Only Search is needed; the generated base answers the rest UNIMPLEMENTED.
    servicer = PreparedAnswers(answers)  # type: ignore[abstract]
    running = await start_server(
        ServerOptions(port=port),
        lambda server: retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(servicer, server),
        [SERVICE_NAME],
    )
    await running.set_serving(True)
    await running.server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transport_floor", description=__doc__)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("service", choices=["retriever"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--responses", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.responses))


if __name__ == "__main__":
    main()
