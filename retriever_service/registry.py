"""The collections of one data directory: create, open at start-up, look up, delete."""

import logging
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from realm.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RealmError,
    ResourceExhausted,
    shown,
)
from realm.files import fsync_dir, make_durable_dir
from realm.retriever.collection import Collection, EncoderLoader
from realm.retriever.embedder import (
    DEFAULT_MODEL,
    MULTILINGUAL_MODEL,
    Backend,
    Encoder,
    EncoderSpec,
)
from realm.retriever.manifest import SETTINGS
from realm.retriever.reindex import ReindexCancelled, ReindexProgress
from realm.retriever.settings import DEFAULT_COMPACT_THRESHOLD, CollectionSettings
from realm.retriever.trained_models import trained_model, trained_versions

_LOGGER = logging.getLogger(__name__)


class Registry:
    """Owns every collection under ``data_dir/collections``; thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        load_encoder: EncoderLoader,
        max_collections: int,
        compact_threshold: int = DEFAULT_COMPACT_THRESHOLD,
        embedding_models: Iterable[str] = (DEFAULT_MODEL,),
        default_backend: Backend = "torch",
    ) -> None:
        self.data_dir = data_dir
        self.root = data_dir / "collections"
        make_durable_dir(self.root)
        self._load_encoder = load_encoder
        # A client names a model, the server decides what may load: a name from a client would
        # otherwise make the server read any path it can see or wait on a model hub.
        self.embedding_models = tuple(
            dict.fromkeys([DEFAULT_MODEL, MULTILINGUAL_MODEL, *embedding_models])
        )
        # What a new collection that names no backend is made with.
        self.default_backend = default_backend
        self._max_collections = max_collections
        self._compact_threshold = compact_threshold
        self._collections: dict[str, Collection] = {}
        # Each collection's latest reindex since start-up, with the thread that runs it.
        self._reindexes: dict[str, tuple[ReindexProgress, threading.Thread]] = {}
        self._lock = threading.Lock()

    def load_all(self) -> None:
        """Opens every collection on disk; a damaged one stops start-up with a clear error.

        Sweeps what interrupted operations leave: dot-directories (a create or a delete cut
        short) and empty directories (a create by an older version, which made the directory
        before its settings)."""
        for directory in sorted(self.root.iterdir()):
            if directory.name.startswith("."):
                shutil.rmtree(directory, ignore_errors=True)
            elif (directory / SETTINGS).exists():
                collection = Collection.open(directory, self._load_encoder, self._compact_threshold)
                self._collections[collection.name] = collection
            elif directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
                _LOGGER.warning("removed %s: an empty leftover of an interrupted create", directory)
            else:
                _LOGGER.error(
                    "%s is not a collection (no %s); it is not served: move it out of %s",
                    directory,
                    SETTINGS,
                    self.root,
                )
        fsync_dir(self.root)

    def create(self, name: str, settings: CollectionSettings) -> Collection:
        with self._lock:
            self._check_room(name)
        encoder = self.encoder_for(settings.encoder)  # outside the lock: may be slow
        with self._lock:
            self._check_room(name)
            collection = Collection.create(
                name, self.root / name, settings, lambda _: encoder, self._compact_threshold
            )
            self._collections[name] = collection
            return collection

    def restore(self, name: str, unpack: Callable[[Path], None]) -> Collection:
        """Makes collection ``name`` from files that ``unpack`` writes into an empty directory
        (a cluster snapshot), checked like any collection as it opens. Made under a dot-name and
        renamed into place, as a create is."""
        with self._lock:
            self._check_room(name)
        staging = self.root / f".restoring-{name}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            unpack(staging)
            with self._lock:
                self._check_room(name)
                staging.rename(self.root / name)
                fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        with self._lock:
            collection = Collection.open(
                self.root / name, self._load_encoder, self._compact_threshold
            )
            self._collections[name] = collection
            return collection

    def stamped(self, settings: CollectionSettings) -> CollectionSettings:
        """``settings`` with the fingerprint of the encoder this server would make its vectors
        with, for a catalog that other replicas create the collection from."""
        encoder = self.encoder_for(settings.encoder)
        return replace(settings, encoder_fingerprint=encoder.fingerprint)

    def encoder_for(self, spec: EncoderSpec) -> Encoder:
        """The encoder of ``spec`` if this server offers its model (INVALID_ARGUMENT if not):
        one the operator named, a packaged default or a version trained in this data
        directory."""
        model = spec.model
        if model not in self.embedding_models and trained_model(self.data_dir, model) is None:
            offered = [*self.embedding_models, *trained_versions(self.data_dir)]
            raise InvalidArgument(
                f"config.embedding_model={shown(model)} is not offered by this server; use one "
                f"of {offered} (the operator adds models with --embedding-models, or trains "
                "versions with realm train retriever)"
            )
        try:
            return self._load_encoder(spec)
        except Exception as error:  # any loader failure: the model is unusable here
            raise FailedPrecondition(
                f"embedding model {model!r} could not be loaded on {spec.backend} "
                f"({type(error).__name__}); the operator must install it or remove it "
                "from --embedding-models (or choose another config.embedding_backend)"
            ) from error

    def reindex(self, name: str, spec: EncoderSpec) -> ReindexProgress:
        """Starts re-encoding collection ``name`` with ``spec``'s model on a thread of its own;
        returns its progress, which ``reindex_status`` keeps reporting."""
        collection = self.get(name)
        self._refuse_second_reindex(name)
        encoder = self.encoder_for(spec)  # may be slow: outside the lock
        if encoder.fingerprint == collection.settings.encoder_fingerprint:
            raise FailedPrecondition(
                f"collection {name!r} is encoded with {spec.model} on {spec.backend} already; "
                "there is nothing to reindex"
            )
        settings = replace(
            collection.settings,
            embedding_model=spec.model,
            embedding_backend=spec.backend,
            encoder_fingerprint=encoder.fingerprint,
        )
        progress = ReindexProgress(spec.model, spec.backend)
        thread = threading.Thread(
            target=_run_reindex,
            args=(collection, settings, encoder, progress),
            name=f"reindex-{name}",
            daemon=True,
        )
        with self._lock:
            self._refuse_second_reindex(name)
            self._reindexes[name] = (progress, thread)
        thread.start()
        return progress

    def reindex_status(self, name: str) -> ReindexProgress | None:
        job = self._reindexes.get(name)
        return None if job is None else job[0]

    def _refuse_second_reindex(self, name: str) -> None:
        job = self._reindexes.get(name)
        if job is not None and job[0].running:
            raise FailedPrecondition(
                f"collection {name!r} is being reindexed with {job[0].model} already; wait "
                "for it to finish (realm stats shows its progress)"
            )

    def _stop_reindex(self, name: str) -> None:
        """Cancels collection ``name``'s reindex, if one runs, and waits until it has stopped."""
        job = self._reindexes.pop(name, None)
        if job is not None:
            job[0].cancelled.set()
            job[1].join()

    def _check_room(self, name: str) -> None:
        """Refuses a create that cannot succeed (caller holds the lock)."""
        if name in self._collections:
            raise AlreadyExists(
                f"collection {name!r} exists already; pick another name or delete it"
            )
        if len(self._collections) >= self._max_collections:
            raise ResourceExhausted(
                f"this server holds max_collections={self._max_collections}; delete one "
                "or raise --max-collections"
            )
        if (self.root / name).exists():
            raise FailedPrecondition(
                f"{self.root / name} exists but is not a collection; move it away to use the "
                f"name {name!r}"
            )

    def get(self, name: str) -> Collection:
        collection = self._collections.get(name)
        if collection is None:
            raise NotFound(
                f"collection {name!r} does not exist; create it first (realm ingest creates it) "
                "or check ListCollections"
            )
        return collection

    def list(self) -> list[Collection]:
        return [self._collections[name] for name in sorted(self._collections)]

    def delete(self, name: str) -> int:
        """Removes the collection; returns how many documents it held."""
        with self._lock:
            collection = self.get(name)
            documents = collection.stats().documents
            del self._collections[name]
        self._stop_reindex(name)
        collection.published.withdraw()  # workers stop answering for it before it goes
        collection.close()
        # Rename first: a crash mid-delete leaves a dot-directory that start-up sweeps away.
        doomed = self.root / f".deleted-{name}-{uuid.uuid4().hex}"
        collection.directory.rename(doomed)
        fsync_dir(self.root)  # the name is free for good, even after a power cut
        shutil.rmtree(doomed, ignore_errors=True)
        _LOGGER.info("deleted collection %s (%d documents)", name, documents)
        return documents

    def close(self) -> None:
        for name in list(self._reindexes):
            self._stop_reindex(name)
        for collection in self._collections.values():
            collection.close()


def _run_reindex(
    collection: Collection,
    settings: CollectionSettings,
    encoder: Encoder,
    progress: ReindexProgress,
) -> None:
    """A reindex's thread: whatever happens, the progress ends not running, with the reason
    of a failure (the old model keeps serving then)."""
    try:
        collection.reindex(settings, encoder, progress)
    except ReindexCancelled:
        progress.error = "cancelled: the server stopped or the collection was deleted"
    except RealmError as error:
        _LOGGER.error("collection %s: reindex failed: %s", collection.name, error)
        progress.error = str(error)
    except Exception as error:
        _LOGGER.exception("collection %s: reindex failed", collection.name)
        progress.error = f"{type(error).__name__}: {error}; the server log has the details"
    finally:
        progress.running = False
