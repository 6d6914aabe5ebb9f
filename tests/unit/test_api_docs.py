"""The API reference builds from the docstrings (scripts/api-docs, pdoc) and documents the emitters and the events."""

import dataclasses
import html
import re
import subprocess
from pathlib import Path

import msgspec

from producers import AsyncEmitter, Emitter, EmitterSettings
from schemas import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]


def _anchors(page: str) -> set[str]:
    return set(re.findall(r'id="([A-Za-z_.]+)"', page))


def _docstring(thing: object) -> str:
    """The first line of its docstring as pdoc writes it (markdown: `code` becomes <code>code</code>)."""
    first = (thing.__doc__ or "").strip().splitlines()[0]
    return html.escape(first, quote=False).replace("&#x27;", "'")


def test_the_reference_documents_every_emitter_method_and_every_event_field(tmp_path: Path) -> None:
    """bash scripts/api-docs DIR writes producers.html and schemas.html: every emitter's public methods, every
    setting, every event type with each of its fields and its docstring."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / "api-docs"), str(tmp_path)], capture_output=True,
                            text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "index.html").exists()
    producers = (tmp_path / "producers.html").read_text()
    anchors = _anchors(producers)
    for emitter, methods in ((Emitter, ("emit", "flush", "close", "set_healthy")),
                             (AsyncEmitter, ("emit", "flush", "aclose", "set_healthy"))):  # fmt: skip
        assert emitter.__name__ in anchors
        assert _docstring(emitter).split("`")[0] in producers
        for method in methods:
            assert f"{emitter.__name__}.{method}" in anchors, f"{emitter.__name__}.{method}"
        assert _docstring(emitter.flush).split("`")[0] in producers
    for setting in dataclasses.fields(EmitterSettings):
        assert f"EmitterSettings.{setting.name}" in anchors, setting.name
    schemas = (tmp_path / "schemas.html").read_text()
    anchors = _anchors(schemas)
    for event_type in EVENT_TYPES:
        assert event_type.__name__ in anchors
        assert _docstring(event_type).split("`")[0] in schemas, event_type.__name__
        own = set(event_type.__annotations__)
        for field in msgspec.structs.fields(event_type):
            if field.name in own:
                assert f"{event_type.__name__}.{field.name}" in anchors, f"{event_type.__name__}.{field.name}"
