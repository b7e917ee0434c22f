"""A collection's background builds: folding its tail into the next immutable generation, the
atomic swap, and tidying what no kept generation needs any more.

A build runs on the compactor's thread while writes continue: it folds the view it started
from, writes the new generation's files, then, under the collection's write lock, swaps the
manifest (the commit point) and moves the writes that arrived meanwhile to a fresh tail.
"""

import contextlib
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from realm import tracing
from realm.errors import StorageError
from realm.retriever.embedder import Encoder
from realm.retriever.generation import GENERATIONS, Generation, generation_dir, write_generation
from realm.retriever.live import View, carry_over, fold
from realm.retriever.manifest import GenerationEntry, write_manifest
from realm.retriever.metrics import BUILD_DURATION
from realm.retriever.settings import CollectionSettings
from realm.retriever.store import DocumentStore
from realm.retriever.topk import FloatArray
from realm.retriever.wal import WriteAheadLog

_LOGGER = logging.getLogger(__name__)


class Compactable(Protocol):
    """What the compactor needs of its collection."""

    name: str
    directory: Path
    settings: CollectionSettings
    store: DocumentStore
    wal: WriteAheadLog
    write_lock: threading.Lock

    @property
    def dimension(self) -> int: ...

    def snapshot(self) -> View: ...

    def publish(self, view: View) -> None: ...


class Compactor:
    """Builds generations for one collection, in the background or on request."""

    def __init__(self, collection: Compactable, threshold: int, fallback: GenerationEntry) -> None:
        """``threshold``: tail passages plus tombstones that start a background build.
        ``fallback``: the manifest's entry kept beside the served one."""
        self.collection = collection
        self.threshold = threshold
        self.fallback = fallback
        self._lock = threading.Lock()  # one build at a time
        self._wanted = threading.Event()
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name=f"compact-{collection.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stops the thread; a build in progress finishes first."""
        self._closing = True
        self._wanted.set()
        if self._thread is not threading.current_thread() and self._thread.is_alive():
            self._thread.join()

    def after_write(self, view: View) -> None:
        """Starts a background build once the tail has grown past the threshold."""
        if view.changes >= self.threshold:
            self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            try:
                self.build()
            except Exception:
                _LOGGER.exception("collection %s: background build failed", self.collection.name)

    def build(self) -> None:
        """Folds the tail into the next generation now (nothing to do when there is no tail)."""
        collection = self.collection
        with self._lock:
            with collection.write_lock:
                built_from = collection.snapshot()
                if built_from.pristine:
                    return
                collection.wal.seal()  # later records go to a segment the next build still needs
            number = built_from.generation.number + 1
            started = time.perf_counter()
            _LOGGER.info(
                "collection %s: building generation %d (%d tail passages, %d tombstones)",
                collection.name,
                number,
                built_from.tail_rows,
                built_from.dead_generation_count,
            )
            try:
                with tracing.span("build", collection=collection.name, generation=number):
                    generation = folded_generation(
                        collection,
                        built_from,
                        built_from.generation.settings,
                        built_from.generation.encoder,
                    )
                with collection.write_lock:
                    write_manifest(  # the commit point
                        collection.directory,
                        collection.settings,
                        collection.dimension,
                        generation.manifest_entry(),
                        built_from.generation.manifest_entry(),
                    )
                    collection.publish(carry_over(built_from, collection.snapshot(), generation))
            except (OSError, sqlite3.Error) as error:
                shutil.rmtree(generation_dir(collection.directory, number), ignore_errors=True)
                raise StorageError(
                    f"collection {collection.name!r}: could not build generation {number} "
                    f"({error}); the served generation and the log are unchanged"
                ) from error
            self.fallback = built_from.generation.manifest_entry()
            BUILD_DURATION.observe(time.perf_counter() - started)
            _LOGGER.info(
                "collection %s serves generation %d (%d passages, log sequence %d)",
                collection.name,
                number,
                generation.n_rows,
                built_from.sequence,
            )
            self.tidy(keep=(number, built_from.generation.number))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Holds off every build meanwhile (a reindex builds the next generation itself)."""
        with self._lock:
            yield

    def tidy(self, keep: tuple[int, ...]) -> None:
        """Removes what neither kept generation needs: older directories, store rows and log
        segments that only generations before the fallback could replay."""
        collection = self.collection
        try:
            collection.store.purge_dead(self.fallback.last_sequence)
            with collection.write_lock:
                collection.wal.remove_through(self.fallback.last_sequence)
            root = collection.directory / GENERATIONS
            for child in root.iterdir() if root.exists() else []:
                if child.name.isdigit() and int(child.name) not in keep:
                    shutil.rmtree(child, ignore_errors=True)
        except (OSError, sqlite3.Error):
            # Committed already; leftovers are only disk space and are retried next build.
            _LOGGER.warning("collection %s: clean-up deferred", collection.name, exc_info=True)


def folded_generation(
    collection: Compactable,
    built_from: View,
    settings: CollectionSettings,
    encoder: Encoder,
    vectors_of: Callable[[npt.NDArray[np.int64]], FloatArray] | None = None,
) -> Generation:
    """Writes the generation after ``built_from``'s: its live passages with BM25 folded and
    their vectors carried over, or, for a reindex, ``vectors_of`` their passage ids."""
    folded = fold(built_from, settings.bm25)
    metadata = collection.store.passage_metadata(built_from.sequence)
    return write_generation(
        collection.directory,
        built_from.generation.number + 1,
        built_from.sequence,
        folded.pids,
        folded.bm25,
        folded.vectors if vectors_of is None else vectors_of(folded.pids),
        [metadata.get(int(pid), {}) for pid in folded.pids],
        settings,
        encoder,
    )
