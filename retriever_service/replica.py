"""A worker process's read-only copies of the writer's collections.

A replica loads the generation the writer serves (the same immutable files, the same SQLite
store, opened for reading) and answers a search only while the writer's published state is
exactly that generation with no write since. Any other time (a write joined the writer's tail,
a build is being swapped in, the collection is new or gone) ``Replicas.serving`` says so and
the worker relays the call to the writer, which always has the newest state. A replica never
replays the log: the tail exists only in the writer, so two processes can never disagree about
a write. Reloads run on a background thread; searches are relayed meanwhile.
"""

import logging
import sqlite3
from pathlib import Path

from realm.errors import StorageError
from realm.retriever.analyzer import Analyzer
from realm.retriever.collection import EncoderLoader, collection_encoder
from realm.retriever.generation import load_generation
from realm.retriever.live import View
from realm.retriever.manifest import STORE, entry_of, read_entries, read_settings
from realm.retriever.published import WITHDRAWN, PublishedState
from realm.retriever.search import Hit, Searcher, SearchQuery
from realm.retriever.store import DocumentStore

_LOGGER = logging.getLogger(__name__)


class Replica:
    """One collection as a worker serves it: searched from any thread, reloaded from one."""

    def __init__(self, directory: Path, load_encoder: EncoderLoader) -> None:
        self.name, self.settings = read_settings(directory)
        self.directory = directory
        self._load_encoder = load_encoder
        self.encoder = collection_encoder(self.name, self.settings, load_encoder)
        self.published = PublishedState.for_reader(directory)
        self.store = DocumentStore(directory / STORE)
        self.searcher = Searcher(Analyzer(self.settings.language), self.store)
        self._view: View | None = None
        self._tried_generation = -1  # the generation last loaded or found unloadable

    @property
    def withdrawn(self) -> bool:
        state = self.published.read()
        return state is not None and state[0] == WITHDRAWN

    def current(self) -> View | None:
        """The loaded view if it is exactly what the writer serves now, else None."""
        view = self._view
        if view is not None and self.published.read() == (view.generation.number, view.sequence):
            return view
        return None

    def snapshot(self) -> View:
        """The loaded view (``search_response`` reports its generation and sequence)."""
        if self._view is None:
            raise StorageError(f"collection {self.name!r} has no generation loaded in this worker")
        return self._view

    def search(self, query: SearchQuery, view: View | None = None) -> list[Hit]:
        return self.searcher.search(view or self.snapshot(), query)

    def stale(self) -> bool:
        """The writer serves a generation this replica has not tried to load yet."""
        state = self.published.read()
        return state is not None and state[0] not in (WITHDRAWN, self._tried_generation)

    def reload(self) -> None:
        """Loads the generation the writer publishes (one thread at a time: ``refresh``)."""
        try:
            state = self.published.read()
            if state is None or state[0] in (WITHDRAWN, self._tried_generation):
                return
            self._tried_generation = state[0]
            self._view = self._load(state[0])
            _LOGGER.info(
                "collection %s: this worker serves generation %d (log sequence %d)",
                self.name,
                self._view.generation.number,
                self._view.sequence,
            )
        except (OSError, sqlite3.Error, StorageError, ValueError, KeyError) as error:
            # The writer may have built past it already; the next published one is tried.
            _LOGGER.warning(
                "collection %s: this worker could not load its generation (%s); the writer "
                "answers for it meanwhile",
                self.name,
                error,
            )

    def _load(self, number: int) -> View:
        _, settings = read_settings(self.directory)
        if settings.encoder_fingerprint != self.settings.encoder_fingerprint:
            # The writer reindexed the collection with another model: load it too.
            self.encoder = collection_encoder(self.name, settings, self._load_encoder)
            self.settings = settings
        entries = read_entries(self.directory, self.settings, self.encoder.dimension)
        entry = entry_of(self.directory, entries, number)
        sequence = entry.last_sequence
        generation = load_generation(
            self.directory,
            entry,
            self.settings,
            self.encoder,
            self.store.passage_metadata(sequence),
        )
        return View.of_generation(generation, self.store.count_documents(sequence))

    def close(self) -> None:
        self.store.close()
        self.published.close()


class Replicas:
    """Every collection of a data directory, as one worker process serves them.

    ``serving`` is on every search's path and only reads; ``refresh``, which the worker runs
    every half second on a thread of its own, opens new collections, loads new generations and
    drops deleted collections.
    """

    def __init__(self, data_dir: Path, load_encoder: EncoderLoader) -> None:
        self.root = data_dir / "collections"
        self._load_encoder = load_encoder
        self._replicas: dict[str, Replica] = {}
        # Deleted collections' replicas, closed one refresh later (when no search that found
        # them can still be reading): until then their files' space is not freed.
        self._dropped: list[Replica] = []

    def serving(self, name: str) -> tuple[Replica, View] | None:
        """The replica and view to answer a search on ``name`` with, or None: relay it."""
        replica = self._replicas.get(name)
        view = None if replica is None else replica.current()
        return None if replica is None or view is None else (replica, view)

    def refresh(self) -> None:
        for replica in self._dropped:
            replica.close()
        self._dropped = []
        replicas = dict(self._replicas)
        for name, replica in list(replicas.items()):
            if replica.withdrawn:
                # Not closed yet: a search on another thread may still be reading it.
                del replicas[name]
                self._dropped.append(replica)
                _LOGGER.info("collection %s was deleted; this worker dropped it", name)
            elif replica.stale():
                replica.reload()
        directories = sorted(self.root.iterdir()) if self.root.exists() else []
        for directory in directories:
            if directory.name.startswith(".") or directory.name in replicas:
                continue
            try:
                replica = Replica(directory, self._load_encoder)
            except (OSError, sqlite3.Error, ValueError, KeyError):
                continue  # being created or deleted right now: the next refresh sees it
            replica.reload()
            replicas[replica.name] = replica
        self._replicas = replicas  # one assignment: searches see the old or the new dict

    def close(self) -> None:
        replicas, self._replicas = [*self._replicas.values(), *self._dropped], {}
        self._dropped = []
        for replica in replicas:
            replica.close()
