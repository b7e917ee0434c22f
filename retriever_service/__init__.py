"""The retriever: analyzer, chunker, BM25 and dense indexes, fusion, store and gRPC servicer.

Everything except ``servicer`` and ``server`` is a plain library that imports no grpc.
"""
