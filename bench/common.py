"""What every benchmark shares: timing, machine facts, result rows and the report file."""

import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# The report the runs write; REALM_BENCH_REPORT points a trial run (a test) somewhere else.
REPORT = Path(
    os.environ.get("REALM_BENCH_REPORT")
    or Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
)


@dataclass(frozen=True, slots=True)
class Row:
    """One comparison: ReaLM's figure against a peer's, and the bar it must reach."""

    benchmark: str
    realm: float
    peer: str
    peer_value: float
    unit: str
    # None: the peer is shown for reference and the issue sets no bar against it.
    bar: float | None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        """ReaLM's figure over the peer's. The bar is a floor when higher is better (speed)
        and a ceiling when lower is better (memory)."""
        return self.realm / self.peer_value if self.peer_value else float("inf")

    @property
    def meets_bar(self) -> bool | None:
        if self.bar is None:
            return None
        return self.ratio >= self.bar if self.higher_is_better else self.ratio <= self.bar

    @property
    def bar_text(self) -> str:
        if self.bar is None:
            return "—"
        return f"{'≥' if self.higher_is_better else '≤'} {self.bar:g}x"

    def as_json(self) -> dict[str, object]:
        return {
            "realm": self.realm,
            "peer": self.peer,
            "peer_value": self.peer_value,
            "ratio": self.ratio,
            "bar": self.bar,
            "meets_bar": self.meets_bar,
            "bar_is": "minimum" if self.higher_is_better else "maximum",
            "unit": self.unit,
        }


def median_seconds(work: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``work`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def machine() -> str:
    """Cores, processor and its widest vector instructions (two "AMD EPYC" machines here differ
    by AVX-512, which moves the model benchmarks by 2-4x), memory and Python."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        info = cpuinfo.read_text()
        found = re.search(r"model name\s*:\s*(.+)", info)
        cpu = found.group(1).strip() if found else cpu
        flags_line = re.search(r"flags\s*:(.*)", info)
        flags = set(flags_line.group(1).split()) if flags_line else set()
        widest = next((name for flag, name in _VECTOR_UNITS if flag in flags), None)
        cpu = f"{cpu}, {widest}" if widest else cpu
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        found = re.search(r"MemTotal:\s*(\d+)", meminfo.read_text())
        memory = f", {int(found.group(1)) / 2**20:.0f} GiB RAM" if found else ""
    return f"{os.cpu_count()} cores ({cpu}){memory}, Python {platform.python_version()}"


_VECTOR_UNITS = (("avx512f", "AVX-512"), ("avx2", "AVX2"))


def versions(*packages: str) -> str:
    found = []
    for package in packages:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


def table(rows: list[Row]) -> str:
    lines = [
        "| benchmark | ReaLM | peer | peer value | ratio | bar | meets |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.benchmark} | {_figure(row.realm)} {row.unit} | {row.peer} | "
            f"{_figure(row.peer_value)} {row.unit} | {_ratio(row.ratio)} | {row.bar_text} | "
            f"{_verdict(row.meets_bar)} |"
        )
    notes = [f"- {row.benchmark}: {row.note}" for row in rows if row.note]
    return "\n".join([*lines, "", *notes] if notes else lines)


def _verdict(meets_bar: bool | None) -> str:
    return "—" if meets_bar is None else "yes" if meets_bar else "NO"


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value >= 0.01 else f"{value:.1e}x"


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def write_section(name: str, body: str) -> None:
    """Replaces this benchmark's section of docs/benchmarks.md (others are left as they are)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = REPORT.read_text(encoding="utf-8") if REPORT.exists() else _HEADER
    section = f"{start}\n{body.strip()}\n{end}"
    if start in text:
        text = re.sub(
            re.escape(start) + r".*?" + re.escape(end), lambda _: section, text, flags=re.S
        )
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    REPORT.write_text(text, encoding="utf-8")


_HEADER = """# Benchmarks

Each section is written by `python -m bench NAME` (see `bench/`), with the command, the machine
and the library versions of the run. Ratios compare ReaLM with a peer measured in the same run;
the bars are those of the benchmark issue. Nothing here is asserted in tests: tests check
correctness (identical top-10, recall), benchmarks measure speed.
"""
