"""Search throughput under load: client threads each sending searches back to back."""

import threading
import time

from realm.client import RetrieverClient


def search_qps(
    targets: list[str], collection: str, queries: list[str], seconds: float, threads: int
) -> float:
    """BM25 searches per second from ``threads`` client threads balancing over ``targets``."""
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def work(slot: int) -> None:
        with RetrieverClient(targets, timeout=60, consistency="eventual") as client:
            i = slot
            while time.perf_counter() < stop:
                client.search(collection, queries[i % len(queries)], k=10, mode="bm25")
                done[slot] += 1
                i += threads

    workers = [threading.Thread(target=work, args=(slot,)) for slot in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.perf_counter() - started)
