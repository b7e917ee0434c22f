"""The API reference is generated from the protos and must be complete and current."""

from pathlib import Path

from realm.app.protodoc import PROTO_ROOT, load_descriptors, render


def test_every_rpc_message_field_and_enum_value_has_a_comment() -> None:
    _, missing = render(load_descriptors())
    assert [m.where for m in missing] == []


def test_docs_api_md_is_current() -> None:
    page, _ = render(load_descriptors())
    committed = (PROTO_ROOT.parent / "docs" / "api.md").read_text(encoding="utf-8")
    assert committed == page, "docs/api.md is stale: run 'make docs'"


def test_proto_packages_match_their_folders() -> None:
    for file in load_descriptors().file:
        assert Path(file.name).parent.as_posix().replace("/", ".") == file.package
