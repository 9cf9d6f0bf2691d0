"""JSON Schema (2020-12, as OpenAPI 3.1 uses it) builders and the shapes shared by routes.

A request schema written with these is both the validator (operation.py compiles it) and the
OpenAPI text (openapi.py serves it): one definition, so the two cannot drift. Response shapes
(Tenant, Message, ...) are components referenced by name with ref().

A field schema's `description` is also the error message when a value fails a constraint other
than its type, so write it as what the value must be ("must be 6 to 15 digits ...").
"""

from __future__ import annotations

from typing import Any

from oxyd.config import WEBHOOK_EVENTS

Schema = dict[str, Any]

TENANT_ID_PATTERN = "^[a-z0-9][a-z0-9_-]{0,62}$"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """The same schema, also accepting null (an optional field sent as null counts as absent)."""
    if "type" in schema and "enum" not in schema and "const" not in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*types, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def string(
    *,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    enum: list[str] | tuple[str, ...] | None = None,
    description: str | None = None,
    fmt: str | None = None,
) -> Schema:
    schema: Schema = {"type": "string"}
    if min_length is not None:
        schema["minLength"] = min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    if pattern is not None:
        schema["pattern"] = pattern
    if enum is not None:
        schema["enum"] = list(enum)
    if fmt is not None:
        schema["format"] = fmt
    if description is not None:
        schema["description"] = description
    return schema


def integer(
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    default: int | None = None,
    description: str | None = None,
) -> Schema:
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    if default is not None:
        schema["default"] = default
    if description is not None:
        schema["description"] = description
    return schema


def number(minimum: float | None = None, maximum: float | None = None) -> Schema:
    schema: Schema = {"type": "number"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def array(
    items: Schema,
    *,
    min_items: int | None = None,
    max_items: int | None = None,
    unique: bool = False,
) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if min_items is not None:
        schema["minItems"] = min_items
    if max_items is not None:
        schema["maxItems"] = max_items
    if unique:
        schema["uniqueItems"] = True
    return schema


def obj(
    props: dict[str, Schema],
    required: tuple[str, ...] | list[str] = (),
    *,
    closed: bool = True,
    description: str | None = None,
) -> Schema:
    """An object; `closed` (the default for requests) refuses unknown fields."""
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description is not None:
        schema["description"] = description
    return schema


def exactly_one_of(*fields: str) -> list[Schema]:
    """For `oneOf`: exactly one of these fields is present (send kinds)."""
    return [{"required": [f]} for f in fields]


def tagged(tag: str, variants: dict[str, Schema]) -> Schema:
    """A tagged union: the object's `tag` field picks the variant (simulator actions).

    Each variant is an obj() without the tag; the tag is added as a const. Validation picks the
    variant by the tag first, so an error names the variant's own field, not all variants."""
    branches = []
    for value, variant in variants.items():
        props = {tag: {"const": value}, **variant.get("properties", {})}
        branches.append(
            {**variant, "properties": props, "required": [tag, *variant.get("required", [])]}
        )
    return {
        "type": "object",
        "required": [tag],
        "properties": {tag: {"type": "string", "enum": list(variants)}},
        "oneOf": branches,
        "discriminator": {"propertyName": tag},
    }


# The characters Python's str.isspace() (and so str.strip()) knows, spelled out: JSON Schema's
# `\s` is ECMA's, which adds U+FEFF and lacks U+001C..U+001F, so it would not say the same.
SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{SPACE}]"  # a pattern: some character that is not a space
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$"


def text(max_length: int, *, pattern: str = NOT_BLANK, description: str | None = None) -> Schema:
    """A string of 1 to max_length characters that is not only spaces."""
    return string(
        min_length=1,
        max_length=max_length,
        pattern=pattern,
        description=description or f"must be 1 to {max_length} characters",
    )


def base64(*, empty: bool = False, description: str = "the file, base64") -> Schema:
    """Standard base64 with its padding, as base64.b64decode(validate=True) reads it."""
    pattern = BASE64_PATTERN[:-1] + "?$" if empty else BASE64_PATTERN
    schema = string(pattern=pattern, description="must be valid base64 (" + description + ")")
    schema["contentEncoding"] = "base64"
    return schema


def forbidden(description: str) -> Schema:
    """For a field that must be left out (or null) in some case; `description` is the error."""
    return {"type": "null", "description": description}


INT, STR, BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
MS = {"type": ["integer", "null"]}


def cursor(pattern: str) -> Schema:
    """A page cursor: opaque to clients, but every string of its published shape is a position
    (store/db.py), so only a cursor of another shape is refused (400 invalid_cursor)."""
    return string(
        pattern=pattern,
        description="the next_cursor of the previous page, as returned (opaque)",
    )


WEBHOOK_URL = string(
    max_length=2048,
    pattern=r"^https?://[^\s/?#]+[^\s]*$",
    description="must be an http:// or https:// URL",
)
WEBHOOK_IN = obj(
    {
        "url": WEBHOOK_URL,
        "secret": string(min_length=1, max_length=512, description="must be 1 to 512 characters"),
        "events": nullable(array(string(enum=WEBHOOK_EVENTS), max_items=64)),
    },
    ("url", "secret"),
)


def json_response(schema: Schema, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def page_of(key: str, item: Schema) -> Schema:
    """A page of a list: `{key: [...], "next_cursor": str or null}`."""
    return obj({key: array(item), "next_cursor": nullable(STR)}, (key, "next_cursor"), closed=False)
