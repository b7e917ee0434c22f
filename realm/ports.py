"""The services' well-known ports, defined once for servers, clients, the CLI and the docs."""

RETRIEVER_PORT = 50051
GENERATOR_PORT = 50052
RETRIEVER_TARGET = f"localhost:{RETRIEVER_PORT}"
GENERATOR_TARGET = f"localhost:{GENERATOR_PORT}"
