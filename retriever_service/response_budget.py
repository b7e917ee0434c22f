"""How many bytes of passages a search response may carry, checked before it is built."""

from realm.errors import ResourceExhausted
from realm.retriever.search import Hit
from realm.retriever.settings import Limits

_HIT_OVERHEAD = 64  # ids, offsets, score and framing of one hit, generously


class ResponseBudget:
    """Bytes a response may still carry. Checked before a response is built: past the message
    limit gRPC would fail the call only after the server had built and serialised it all."""

    def __init__(self, limits: Limits) -> None:
        self.limit = limits.max_response_bytes
        self.left = self.limit

    def charge(self, hits: list[Hit]) -> None:
        # Characters bound UTF-8 bytes from below and a quarter of them from above: count
        # bytes exactly only when the cheap bound does not settle it.
        chars = sum(_hit_chars(hit) for hit in hits)
        cost = chars if 4 * chars <= self.left else sum(_hit_bytes(hit) for hit in hits)
        self.left -= cost
        if self.left < 0:
            raise ResourceExhausted(
                f"the response would carry more than max_response_bytes={self.limit:,} bytes of "
                "passages, titles and metadata; lower k or send fewer searches at once"
            )


def _hit_chars(hit: Hit) -> int:
    record = hit.passage
    metadata = sum(len(key) + len(value) for key, value in record.metadata.items())
    return len(record.text) + len(record.title) + 2 * len(record.doc_id) + metadata + _HIT_OVERHEAD


def _hit_bytes(hit: Hit) -> int:
    record = hit.passage
    metadata = sum(len(k.encode()) + len(v.encode()) for k, v in record.metadata.items())
    texts = (record.text, record.title, record.doc_id, record.doc_id)
    return sum(len(text.encode()) for text in texts) + metadata + _HIT_OVERHEAD
