"""The README's configuration reference, generated from the config models.

Descriptions live next to the fields (attribute docstrings in config.py), so
the reference cannot drift from the code: a test regenerates it and compares.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from zhclip.pipeline.core.config import Config


def _type_name(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    return text.replace("typing.", "").replace("zhclip.pipeline.core.config.", "")


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, BaseModel):
        return ""
    return json.dumps(value, ensure_ascii=False)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def reference_rows(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _model_in(field.annotation)
        is_list = typing.get_origin(field.annotation) is list
        rows.append((key, _type_name(field.annotation), _default(field), field.description or ""))
        if sub is not None:
            rows.extend(reference_rows(sub, f"{key}[]." if is_list else f"{key}."))
    return rows


def config_reference_markdown() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, desc in reference_rows():
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines.append(f"| `{key}` | {cell(typ)} | {cell(default)} | {cell(desc)} |")
    return "\n".join(lines) + "\n"


START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def with_reference(readme: str) -> str:
    """``readme`` with the text between the reference markers regenerated."""
    head, sep, rest = readme.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"README lacks the {START} / {END} markers")
    return f"{head}{START}\n{config_reference_markdown()}{END}{tail}"


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        path = sys.argv[2]
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(with_reference(text))
    else:
        print(config_reference_markdown(), end="")
