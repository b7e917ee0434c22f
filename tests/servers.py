"""The retriever as a real child process, for tests (the same supervisor ``realm demo`` uses)."""

from pathlib import Path

from realm.supervisor import ServiceProcess, free_port, health_status

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "GeneratorProcess", "RetrieverProcess", "health_status"]


class RetrieverProcess(ServiceProcess):
    """``realm serve retriever --data-dir DIR`` with its log beside the data directory."""

    def __init__(self, data_dir: Path, *extra: str, port: int | None = None) -> None:
        port = port or free_port()
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


class GeneratorProcess(ServiceProcess):
    """``realm serve generator --retriever TARGET`` with the packaged default model."""

    def __init__(self, log_dir: Path, retriever_target: str, *extra: str) -> None:
        port = free_port()
        super().__init__(
            "generator",
            log_dir / f"generator-{port}.log",
            "--retriever",
            retriever_target,
            *extra,
            port=port,
        )

    def __enter__(self) -> "GeneratorProcess":
        self.start().wait_serving()
        return self
