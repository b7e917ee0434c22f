"""Writes a known-item BEIR data set from the packaged Wikipedia summaries.

Each article's one-line description ("Painting by Leonardo da Vinci") is a query whose one
relevant document is that article; descriptions shared by several articles are left out. It is a
second corpus, unlike Cranfield, on which to check that hybrid search does not fall below either
side: ``python -m bench.wiki_beir OUT --every 5`` then ``realm eval retrieval --beir OUT ...``.
``--language fr`` or ``es`` makes the same set from the French or Spanish summaries.
"""

import argparse
import json
from collections import Counter
from pathlib import Path

from realm.app.corpus import wiki_summaries


def write(out: Path, every: int, language: str = "en") -> tuple[int, int]:
    documents = wiki_summaries(0, language=language)[::every]
    shared = Counter(d.metadata.get("description", "") for d in documents)
    queries = {
        d.id: d.metadata["description"]
        for d in documents
        if d.metadata.get("description") and shared[d.metadata["description"]] == 1
    }
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for d in documents:
            handle.write(
                json.dumps({"_id": d.id, "title": d.title, "text": d.text}, ensure_ascii=False)
                + "\n"
            )
    with (out / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for number, text in enumerate(queries.values(), start=1):
            handle.write(json.dumps({"_id": str(number), "text": text}, ensure_ascii=False) + "\n")
    with (out / "qrels" / "test.tsv").open("w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for number, doc_id in enumerate(queries, start=1):
            handle.write(f"{number}\t{doc_id}\t1\n")
    return len(documents), len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wiki_beir", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--every", type=int, default=5, help="keep every N-th article (default 5)")
    parser.add_argument("--language", choices=("en", "fr", "es"), default="en")
    args = parser.parse_args()
    documents, queries = write(args.out, args.every, args.language)
    print(f"{args.out}: {documents} documents, {queries} queries")  # the command's only output


if __name__ == "__main__":
    main()
