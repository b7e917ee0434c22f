"""Power cuts, not just crashes: SIGKILL keeps the page cache, so it can never catch a missing
fsync. Here every fsync the retriever makes is recorded (a shim around ``os.fsync``): a file's
bytes and a directory's entries, by inode, as they were when made durable. From that record we
build each on-disk state a power cut could leave after each fsync — names created or renamed
without a directory fsync are not there, and data written since a file's last fsync may be gone
(as in ALICE's and LazyFS's models) — and recover from every one of them.

Unsynced data meets one of four fates: all lost, all kept, appends torn in half, or kept in
some files and lost in others (writes reordered across files). SQLite makes its own writes
durable (``synchronous=FULL``), out of sight of the shim; its files are taken as they were at
each moment, names included only once a directory fsync saw them.
"""

import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import pytest

from realm.errors import NotFound
from realm.retriever.embedder import EncoderSpec, SentenceTransformerEncoder
from realm.retriever.registry import Registry
from realm.retriever.search import SearchQuery
from realm.retriever.settings import DEFAULT_COMPACT_THRESHOLD, CollectionSettings
from realm.retriever.store import StoredDocument

pytestmark = pytest.mark.slow
T = TypeVar("T")
NAME = "cut"
_SQLITE_SUFFIXES = (".sqlite", ".sqlite-wal", ".sqlite-shm")


# What a power cut does to the data written to a file since its last fsync.
Fate = Literal["lost", "kept", "torn", "mixed"]
FATES: tuple[Fate, ...] = ("lost", "kept", "torn", "mixed")


@dataclass
class DiskRecord:
    """Durable facts in the order they became true; ``events`` counts fsyncs so far."""

    root: Path
    events: int = 0
    # inode -> [(event, bytes)] / [(event, {name: (inode, is_dir)})]
    synced: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    entries: dict[int, list[tuple[int, dict[str, tuple[int, bool]]]]] = field(default_factory=dict)
    # Every file's bytes at each event, synced or not (SQLite's files are always taken so).
    current: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)

    def on_fsync(self, fd: int) -> None:
        self.events += 1
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            listing = {}
            for entry in os.scandir(f"/proc/self/fd/{fd}"):
                entry_info = entry.stat(follow_symlinks=False)
                listing[entry.name] = (entry_info.st_ino, stat.S_ISDIR(entry_info.st_mode))
            self.entries.setdefault(info.st_ino, []).append((self.events, listing))
        else:
            with open(f"/proc/self/fd/{fd}", "rb") as handle:  # the fd may be write-only
                data = handle.read()
            self.synced.setdefault(info.st_ino, []).append((self.events, data))
        for path in self.root.rglob("*"):
            if path.is_file():
                history = self.current.setdefault(path.stat().st_ino, [])
                data = path.read_bytes()
                if not history or history[-1][1] != data:
                    history.append((self.events, data))

    def rebuild(self, at: int, inode: int, into: Path, fate: Fate) -> None:
        """Writes the directory ``inode`` as a power cut right after event ``at`` leaves it,
        unsynced file data meeting ``fate``: all lost, all kept, appends torn in half, or kept
        in some files and lost in others (writes reordered across files)."""
        into.mkdir(parents=True, exist_ok=True)
        no_entries: dict[str, tuple[int, bool]] = {}
        for name, (child, is_dir) in _latest(self.entries.get(inode, []), at, no_entries).items():
            if is_dir:
                self.rebuild(at, child, into / name, fate)
                continue
            now = _latest(self.current.get(child, []), at, b"")
            if name.endswith(_SQLITE_SUFFIXES):
                (into / name).write_bytes(now)  # SQLite keeps its own files consistent
                continue
            durable = _latest(self.synced.get(child, []), at, b"")
            if fate == "mixed":
                fate_here: Fate = "kept" if child % 2 else "lost"
            else:
                fate_here = fate
            if fate_here == "kept":
                data = now
            elif fate_here == "torn" and len(now) > len(durable) and now.startswith(durable):
                data = now[: len(durable) + (len(now) - len(durable)) // 2]
            else:
                data = durable
            (into / name).write_bytes(data)


def _latest(history: list[tuple[int, T]], at: int, default: T) -> T:
    found = default
    for event, value in history:
        if event > at:
            break
        found = value
    return found


@dataclass
class Acknowledged:
    """The workload's state after each acknowledged step, and the event it was acknowledged at."""

    steps: list[tuple[int, dict[str, str] | None]] = field(default_factory=list)

    def expected(self, at: int) -> tuple[dict[str, str] | None, dict[str, str] | None]:
        """What must survive a cut after event ``at``: the last state acknowledged by then, and
        the state of the step in flight (which may or may not have landed)."""
        done: dict[str, str] | None = None
        for event, state in self.steps:
            if event > at:
                return done, state
            done = state
        return done, done


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> DiskRecord:
    record = DiskRecord(tmp_path / "data")
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        record.on_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return record


def _workload(registry: Registry, record: DiskRecord, acknowledged: Acknowledged) -> None:
    """Creates a collection, writes, replaces, deletes, builds two generations (the second
    tidies the log and the first generation away) and writes on."""
    live: dict[str, str] = {}

    def step(action: Callable[[], object], after: dict[str, str] | None) -> None:
        action()
        acknowledged.steps.append((record.events, None if after is None else dict(after)))

    step(lambda: registry.create(NAME, CollectionSettings()), {})
    collection = registry.get(NAME)

    def write(prefix: str, count: int, version: int) -> None:
        documents = [
            StoredDocument(
                f"{prefix}{i}", f"Note {prefix}{i} version {version}: mark{prefix}{i}v{version}."
            )
            for i in range(count)
        ]
        live.update({d.doc_id: d.text for d in documents})
        step(lambda: collection.upsert(documents), live)

    write("a", 6, 1)
    write("b", 4, 1)
    write("a", 2, 2)  # replaces a0, a1
    for doomed in (["b0"], ["a5", "b3"]):
        for doc_id in doomed:
            live.pop(doc_id)
        step(partial(collection.delete, doomed), live)
    step(collection.compact, live)
    write("c", 3, 1)
    live.pop("a2")
    step(lambda: collection.delete(["a2"]), live)
    step(collection.compact, live)
    write("d", 3, 1)
    write("c", 1, 2)


def _check(recovered: Registry, done: dict[str, str] | None, maybe: dict[str, str] | None) -> str:
    """Empty when the recovered state is one of the allowed ones; else what is wrong."""
    names = [c.name for c in recovered.list()]
    if done is None:
        return "" if names in ([], [NAME]) else f"collections {names}"
    if names != [NAME]:
        return f"the acknowledged collection is missing: {names}"
    collection = recovered.get(NAME)
    candidates = [state for state in (done, maybe) if state is not None]
    found: dict[str, str] = {}
    for doc_id in sorted({d for state in candidates for d in state} | {"b0", "a5", "b3", "a2"}):
        with contextlib.suppress(NotFound):  # absent
            found[doc_id] = collection.get(doc_id)[0].text
    if found not in candidates:
        return f"documents {found} are neither {done} nor {maybe}"
    for doc_id, text in found.items():
        token = text.rsplit(": ", 1)[1].rstrip(".")
        hits = collection.search(SearchQuery(token, 3, "bm25"))
        if [hit.passage.doc_id for hit in hits[:1]] != [doc_id]:
            return f"{doc_id} is stored but its index entry is lost"
    if collection.stats().documents != len(found):
        return f"the index counts {collection.stats().documents} documents, {len(found)} live"
    return ""


def test_recovery_from_every_state_a_power_cut_can_leave(
    recorded: DiskRecord, encoder: SentenceTransformerEncoder, tmp_path: Path
) -> None:
    def load(_: EncoderSpec) -> SentenceTransformerEncoder:
        return encoder

    registry = Registry(recorded.root, load, 4, 10**9)
    acknowledged = Acknowledged()
    _workload(registry, recorded, acknowledged)
    registry.close()
    root_inode = (recorded.root / "collections").stat().st_ino
    assert recorded.events > 30, "the shim saw too few fsyncs to mean anything"
    problems = []
    for at in range(1, recorded.events + 1):
        for fate in FATES:
            state = tmp_path / f"cut-{at:03d}-{fate}" / "data"
            recorded.rebuild(at, root_inode, state / "collections", fate)
            problem = _recover_and_check(state, load, *acknowledged.expected(at))
            if problem:
                problems.append(f"cut after fsync {at}, unsynced data {fate}: {problem}")
    assert problems == [], "\n".join(problems)


def _recover_and_check(
    state: Path,
    load: Callable[[EncoderSpec], SentenceTransformerEncoder],
    done: dict[str, str] | None,
    maybe: dict[str, str] | None,
) -> str:
    try:
        recovered = Registry(state, load, 4, DEFAULT_COMPACT_THRESHOLD)
        recovered.load_all()
    except Exception as error:  # a state recovery refuses: a durability bug
        return f"recovery failed: {error}"
    try:
        return _check(recovered, done, maybe)
    finally:
        recovered.close()
