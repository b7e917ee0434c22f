"""``python -m bench [NAMES...] [--quick] [--json FILE]``: run benchmarks, print and record them."""

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from bench import (
    bm25_bench,
    dense_bench,
    encode_bench,
    generate_bench,
    grpc_bench,
    memory_bench,
    write_bench,
)
from bench.common import Row, machine, table, versions, write_section

BENCHMARKS: dict[str, tuple[Callable[[bool], list[Row]], tuple[str, ...]]] = {
    "bm25": (bm25_bench.run, ("bm25s", "rank-bm25", "numpy", "scipy")),
    "dense": (dense_bench.run, ("annoy", "hnswlib", "numpy")),
    "encode": (encode_bench.run, ("sentence-transformers", "torch")),
    "grpc": (grpc_bench.run, ("grpcio", "protobuf")),
    "generate": (generate_bench.run, ("transformers", "torch")),
    "memory": (memory_bench.run, ("bm25s", "annoy", "numpy")),
    "writes": (write_bench.run, ("bm25s", "annoy", "sentence-transformers")),
}


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
        run, libraries = BENCHMARKS[name]
        rows = run(args.quick)
        report = table(rows)
        print(f"\n## {name}\n{report}")  # a benchmark's output is its report
        write_section(
            name,
            f"## {name}\n\n`{command}` on {machine()}; {versions(*libraries)}.\n\n{report}",
        )
        results.update({row.benchmark + f" vs {row.peer}": row.as_json() for row in rows})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
