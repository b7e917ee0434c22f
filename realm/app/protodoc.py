"""Renders the API reference (docs/api.md) from the protos' own comments.

The protos are the source of truth; a test regenerates this page and fails when it is stale or
when an RPC, message, field or enum value has no comment.
"""

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"  # the checkout's proto/
# Paths in SourceCodeInfo: FileDescriptorProto field numbers.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _VALUE, _METHOD = 2, 2, 2


@dataclass(frozen=True, slots=True)
class Undocumented:
    where: str


def load_descriptors(root: Path = PROTO_ROOT) -> descriptor_pb2.FileDescriptorSet:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        code = protoc.main(
            ["protoc", f"-I{root}", "--include_source_info", f"--descriptor_set_out={out}", *files]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed on {files}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(location.path): " ".join(location.leading_comments.split())
        for location in file.source_code_info.location
        if location.leading_comments.strip()
    }


def render(descriptors: descriptor_pb2.FileDescriptorSet) -> tuple[str, list[Undocumented]]:
    """The Markdown page, and every element that lacks a comment."""
    lines = [
        "# API reference",
        "",
        "Generated from `proto/` by `python -m realm.app.protodoc`; do not edit.",
        "",
    ]
    missing: list[Undocumented] = []

    def doc(comments: dict[tuple[int, ...], str], path: tuple[int, ...], where: str) -> str:
        text = comments.get(path, "")
        if not text:
            missing.append(Undocumented(where))
        return text

    for file in descriptors.file:
        comments = _comments(file)
        lines += [f"## `{file.name}` (package `{file.package}`)", ""]
        for s, service in enumerate(file.service):
            lines += [
                f"### service `{service.name}`",
                "",
                doc(comments, (_SERVICE, s), service.name),
                "",
            ]
            lines += ["| RPC | request | response | what it does |", "|---|---|---|---|"]
            for m, method in enumerate(service.method):
                request = ("stream " if method.client_streaming else "") + method.input_type.rsplit(
                    ".", 1
                )[-1]
                response = (
                    "stream " if method.server_streaming else ""
                ) + method.output_type.rsplit(".", 1)[-1]
                text = doc(comments, (_SERVICE, s, _METHOD, m), f"{service.name}.{method.name}")
                lines.append(f"| `{method.name}` | `{request}` | `{response}` | {text} |")
            lines.append("")
        for e, enum in enumerate(file.enum_type):
            lines += [f"### enum `{enum.name}`", "", doc(comments, (_ENUM, e), enum.name), ""]
            lines += ["| value | number | meaning |", "|---|---|---|"]
            for v, value in enumerate(enum.value):
                text = doc(comments, (_ENUM, e, _VALUE, v), f"{enum.name}.{value.name}")
                lines.append(f"| `{value.name}` | {value.number} | {text} |")
            lines.append("")
        for i, message in enumerate(file.message_type):
            lines += [
                f"### message `{message.name}`",
                "",
                doc(comments, (_MESSAGE, i), message.name),
                "",
            ]
            if message.field:
                lines += ["| field | type | number | meaning |", "|---|---|---|---|"]
            for f, field in enumerate(message.field):
                text = doc(comments, (_MESSAGE, i, _FIELD, f), f"{message.name}.{field.name}")
                lines.append(
                    f"| `{field.name}` | `{_type_name(field, message)}` | {field.number} | {text} |"
                )
            lines.append("")
    return "\n".join(lines).rstrip() + "\n", missing


def _type_name(
    field: descriptor_pb2.FieldDescriptorProto, owner: descriptor_pb2.DescriptorProto
) -> str:
    if field.type_name:
        name = field.type_name.rsplit(".", 1)[-1]
        entry = next((n for n in owner.nested_type if n.name == name and n.options.map_entry), None)
        if entry is not None:
            return f"map<{_scalar(entry.field[0])}, {_scalar(entry.field[1])}>"
    else:
        name = _scalar(field)
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {name}"
    return f"optional {name}" if field.proto3_optional else name


def _scalar(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type_name:
        return field.type_name.rsplit(".", 1)[-1]
    return descriptor_pb2.FieldDescriptorProto.Type.Name(field.type).removeprefix("TYPE_").lower()


def main() -> None:
    page, missing = render(load_descriptors())
    if missing:
        sys.exit("undocumented: " + ", ".join(m.where for m in missing))
    (PROTO_ROOT.parent / "docs" / "api.md").write_text(page, encoding="utf-8")


if __name__ == "__main__":
    main()
