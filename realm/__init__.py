"""ReaLM: retrieval-augmented generation served over gRPC.

This package holds what both services share: generated stubs (``realm.v1``), the error
hierarchy, server bootstrap, logging and the ``realm`` command line.
"""

__version__ = "0.1.0"
