"""ReaLM: retrieval-augmented generation served over gRPC.

``realm`` itself is the foundation every other layer stands on: generated stubs (``realm.v1``),
the server bootstrap and interceptors, client channels, errors, logs, files and names. It imports
no service. ``realm.retriever``, ``realm.generator`` and ``realm.client`` stand on it;
``realm.app`` (the command line, demo, evaluation) stands on all of them (docs/architecture.md).
"""

__version__ = "0.1.0"
