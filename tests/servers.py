"""The retriever as a real child process, for tests (the same supervisor ``realm demo`` uses)."""

from pathlib import Path

from realm.supervisor import ServiceProcess, free_port, health_status

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "RetrieverProcess", "health_status"]


class RetrieverProcess(ServiceProcess):
    """``realm serve retriever --data-dir DIR`` with its log beside the data directory."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        port = free_port()
        super().__init__(
            "retriever",
            data_dir.parent / f"retriever-{port}.log",
            "--data-dir",
            str(data_dir),
            *extra,
            port=port,
        )
        self.data_dir = data_dir

    def __enter__(self) -> "RetrieverProcess":
        self.start().wait_serving()
        return self
