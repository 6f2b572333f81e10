"""`profiles init`: a commented starting profile, written from the profile model itself.

Every key, its comment and its list of valid values come from the pydantic fields and their
descriptions, so the file cannot drift from what `profiles validate` accepts.
"""

from __future__ import annotations

import textwrap
import types
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from slurm_sglang.profile import DEFAULT_PROFILE_NAME, ClusterProfile, load_profile

COMMENT_WIDTH = 98
INDENT = "  "
STARTER_NAME = "my-cluster"
# Written out by `init` with their own comments, never copied from the source profile.
_HEADER_KEYS = ("name", "extends")


def _section_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _bounds(field: FieldInfo) -> str:
    parts = []
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            parts.append(f"at least {rule.ge}")
        elif isinstance(rule, annotated_types.Le):
            parts.append(f"at most {rule.le}")
    return ", ".join(parts)


def _kind_of(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of: " + ", ".join(str(choice) for choice in get_args(annotation))
    if origin in (Union, types.UnionType):
        kinds = [_kind_of(arg) for arg in get_args(annotation) if arg is not type(None)]
        return " or ".join(kinds) + ", or null"
    if origin is list:
        return "a list of text items"
    if origin is dict:
        return "a mapping of NAME: text"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    return names.get(annotation, str(annotation))


def valid_values(field: FieldInfo) -> str:
    """What a field accepts, in words: its choices, type and bounds."""
    kind = _kind_of(field.annotation)
    bounds = _bounds(field)
    return f"{kind} ({bounds})" if bounds else kind


def _comment(text: str, indent: str) -> list[str]:
    width = COMMENT_WIDTH - len(indent) - 2
    wrapped = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)
    return [f"{indent}# {line}" for line in wrapped]


def _value_lines(key: str, value: Any, indent: str) -> list[str]:
    dumped = yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False, width=1000)
    return [f"{indent}{line}" for line in dumped.splitlines()]


def _field_lines(key: str, field: FieldInfo, value: Any, indent: str) -> list[str]:
    description = (field.description or key).rstrip(".")
    return [
        *_comment(f"{description}.", indent),
        *_comment(f"Valid: {valid_values(field)}.", indent),
        *_value_lines(key, value, indent),
    ]


def _section_lines(key: str, model: type[BaseModel], values: BaseModel) -> list[str]:
    summary = (model.__doc__ or key).strip().splitlines()[0]
    lines = ["", *_comment(f"{key}: {summary}", ""), f"{key}:"]
    for name, field in model.model_fields.items():
        lines += _field_lines(name, field, getattr(values, name), INDENT)
    return lines


def render_profile_init(source: str = DEFAULT_PROFILE_NAME, name: str = STARTER_NAME) -> str:
    """A commented profile file holding every key with the values of ``source`` (resolved)."""
    profile = load_profile(source)
    fields = ClusterProfile.model_fields
    lines = [
        f"# slurm-sglang cluster profile, started from the profile '{profile.name}'.",
        "# Every key is optional; one left out takes its default (see: profiles show default).",
        "# Check it:        slurm-sglang profiles validate FILE",
        "# See its script:  slurm-sglang render --cluster FILE",
        "# Editor schema:   slurm-sglang profiles schema > profile.schema.json",
        "",
        *_field_lines("name", fields["name"], name, ""),
        *_field_lines("extends", fields["extends"], "", ""),
    ]
    for key, field in fields.items():
        if key in _HEADER_KEYS:
            continue
        model = _section_model(field)
        if model is None:
            lines += _field_lines(key, field, getattr(profile, key), "")
        else:
            lines += _section_lines(key, model, getattr(profile, key))
    return "\n".join(lines) + "\n"
