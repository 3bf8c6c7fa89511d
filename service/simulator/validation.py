"""A tiny JSON-schema subset with Replicate's (gojsonschema-style) error wording.

Replicate answers a bad input with 422 and one `invalid_fields` entry per problem::

    {"title": "Input validation failed", "status": 422,
     "detail": "- input.num_outputs: Must be less than or equal to 4\\n",
     "invalid_fields": [{"type": "number_lte", "field": "input.num_outputs",
                         "description": "Must be less than or equal to 4"}]}

A missing required property is reported on the parent (`field: "input"`,
`description: "prompt is required"`); root-level body problems carry no field prefix in `detail`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

JsonType = Literal["string", "integer", "number", "boolean", "array", "object"]

_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$")
ROOT = "(root)"


@dataclass(frozen=True)
class InvalidField:
    type: str
    field: str
    description: str

    def as_json(self) -> dict[str, str]:
        return {"type": self.type, "field": self.field, "description": self.description}

    def detail_line(self) -> str:
        if self.field == ROOT:
            return f"- {self.description}\n"
        return f"- {self.field}: {self.description}\n"


@dataclass(frozen=True)
class FieldSpec:
    """One property: JSON type, optional enum / bounds / uri format, nullability."""

    type: JsonType
    enum: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    uri: bool = False
    nullable: bool = False
    items: FieldSpec | None = None


@dataclass(frozen=True)
class ObjectSpec:
    """An object with known properties, required names and no additional properties."""

    properties: Mapping[str, FieldSpec]
    required: tuple[str, ...] = ()


def json_type_name(value: object) -> str:
    """The JSON type name of a decoded value, as gojsonschema reports it ("given: ...")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_ok(spec_type: JsonType, value: object) -> bool:
    given = json_type_name(value)
    if spec_type == "number":
        return given in ("integer", "number") and math.isfinite(float(value))  # type: ignore[arg-type]
    return given == spec_type


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def check_value(name: str, field: str, spec: FieldSpec, value: object) -> list[InvalidField]:
    """Problems with one property value (empty list when valid)."""
    if value is None and spec.nullable:
        return []
    if not _type_ok(spec.type, value):
        expected = spec.type if not spec.nullable else f"{spec.type}/null"
        return [
            InvalidField(
                "invalid_type",
                field,
                f"Invalid type. Expected: {expected}, given: {json_type_name(value)}",
            )
        ]
    if spec.enum is not None and value not in spec.enum:
        allowed = ", ".join(f'"{v}"' for v in spec.enum)
        return [InvalidField("enum", field, f"{name} must be one of the following: {allowed}")]
    if spec.type in ("integer", "number"):
        number = float(value)  # type: ignore[arg-type]
        if spec.minimum is not None and number < spec.minimum:
            return [
                InvalidField(
                    "number_gte",
                    field,
                    f"Must be greater than or equal to {_format_number(spec.minimum)}",
                )
            ]
        if spec.maximum is not None and number > spec.maximum:
            return [
                InvalidField(
                    "number_lte",
                    field,
                    f"Must be less than or equal to {_format_number(spec.maximum)}",
                )
            ]
    if spec.uri and isinstance(value, str) and not _URI_RE.match(value):
        return [InvalidField("format", field, "Does not match format 'uri'")]
    if spec.type == "array" and spec.items is not None and isinstance(value, list):
        problems: list[InvalidField] = []
        for index, item in enumerate(value):
            problems += check_value(str(index), f"{field}.{index}", spec.items, item)
        return problems
    return []


def check_object(spec: ObjectSpec, value: Mapping[str, Any], field: str) -> list[InvalidField]:
    """Problems with an object: missing required names, unknown names, bad values.

    `field` names the object itself ("input", or ROOT for the request body).
    """
    problems = [
        InvalidField("required", field, f"{name} is required")
        for name in spec.required
        if name not in value
    ]
    for name, item in value.items():
        prop = spec.properties.get(name)
        if prop is None:
            problems.append(
                InvalidField(
                    "additional_property_not_allowed",
                    field,
                    f"Additional property {name} is not allowed",
                )
            )
            continue
        child = name if field == ROOT else f"{field}.{name}"
        problems += check_value(name, child, prop, item)
    return problems


def detail_text(problems: Sequence[InvalidField]) -> str:
    return "".join(p.detail_line() for p in problems)
