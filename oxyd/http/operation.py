"""One definition per route: what it accepts drives both validation and the OpenAPI document.

    @operation(table.post, "/v1/tenants/{id}/pair", "Start pairing", ok=(202, TENANT_OK),
               errors=(409,), body=obj({"phone": nullable(PHONE)}), body_required=False)
    async def pair(request: web.Request, inp: Input) -> web.Response:
        ... inp.tenant, inp.body, inp.query, inp.path, inp.headers ...

Before the handler runs, the wrapper checks in this order: the token's access (admin-only
routes answer 403), the path parameters (`{id}` must be a tenant this token sees, else 404),
the query, the headers, the body (read within the route's byte limit, parsed, validated with
jsonschema_rs against the very schema openapi.py publishes). Every refusal is the usual JSON
error naming the field. What JSON Schema cannot say (a tenant that must be a simulator, media
bytes that must decode) stays in the handler, and its status is listed in `errors`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema_rs
from aiohttp import web

from oxyd.http import shapes
from oxyd.http.access import require_admin, tenant_id
from oxyd.http.inputs import body_limit_bytes, parse_json_object, read_limited
from oxyd.http.keys import APP
from oxyd.http.replies import ApiError

Access = Literal["open", "any", "admin"]
OperationHandler = Callable[[web.Request, "Input"], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Input:
    """What the wrapper validated: handlers read these, never the raw request."""

    tenant: str | None = None
    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    body_bytes: int = 0  # the size of the body as received


@dataclass
class Operation:
    method: str
    path: str
    summary: str
    ok: tuple[int, dict[str, Any]]
    errors: tuple[int, ...] = ()
    access: Access = "any"
    body: shapes.Schema | None = None
    body_required: bool = True
    path_params: dict[str, shapes.Schema] = field(default_factory=dict)
    query: dict[str, shapes.Schema] = field(default_factory=dict)
    headers: dict[str, shapes.Schema] = field(default_factory=dict)
    # Extra documented answers beyond ok and the errors (e.g. /readyz's 503).
    responses: dict[int, dict[str, Any]] = field(default_factory=dict)
    # A top-level field or parameter whose invalid value gets its own code (POST /v1/tenants:
    # the id; a cursor: invalid_cursor).
    field_codes: dict[str, str] = field(default_factory=dict)
    # One code for every body error of this route (the simulator's `invalid_action`).
    body_error_code: str | None = None
    # Bytes the body may have (default http.max_body_bytes); the App is passed in.
    limit_bytes: Callable[[Any], int] | None = None
    # Runs on the parsed body before the schema, with (App, body, size in bytes): checks that
    # must answer before field errors (a text body past http.max_body_bytes is 413, not 400).
    precheck: Callable[[Any, dict[str, Any], int], None] | None = None
    # The handler reads the body itself (streams, or larger limits it checks after parsing);
    # `request_content` documents it ({media type: {"schema": ...}}).
    raw_body: bool = False
    request_content: dict[str, Any] | None = None
    # False for a route that makes the tenant {id} (an archive import): the id is checked, and
    # the handler answers for a tenant that exists already.
    tenant_exists: bool = True
    description: str | None = None
    tags: tuple[str, ...] = ()
    _body_check: BodyCheck | None = None
    _param_checks: dict[str, Any] = field(default_factory=dict)

    @property
    def tenant_route(self) -> bool:
        return "{id}" in self.path and self.path.startswith("/v1/tenants/")

    def reads_body(self) -> bool:
        return self.body is not None or self.raw_body or self.method in ("POST", "PUT", "PATCH")


def operation(
    register: Callable[[str], Callable[[Any], Any]],
    path: str,
    summary: str,
    *,
    ok: tuple[int, dict[str, Any]],
    **spec: Any,
) -> Callable[[OperationHandler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Register a handler on a RouteTableDef (`table.post`, ...) with its Operation."""
    method = register.__name__.upper()
    op = Operation(method, path, summary, ok, **spec)
    if op.body is not None:
        op._body_check = BodyCheck(op.body, op.field_codes, op.body_error_code)
    for name, schema in {**op.path_params, **op.query, **op.headers}.items():
        op._param_checks[name] = jsonschema_rs.Draft202012Validator(schema)

    def decorate(handler: OperationHandler):
        async def wrapped(request: web.Request) -> web.StreamResponse:
            return await handler(request, await _validated(request, op))

        wrapped.__name__ = handler.__name__
        wrapped.__doc__ = handler.__doc__
        wrapped.operation = op  # type: ignore[attr-defined]  # read by openapi.py
        register(path)(wrapped)
        return wrapped

    return decorate


async def _validated(request: web.Request, op: Operation) -> Input:
    if op.access == "admin":
        require_admin(request)
    inp = Input()
    if op.tenant_route:
        inp.tenant = tenant_id(request, exists=op.tenant_exists)
    for name, schema in op.path_params.items():
        raw = request.match_info[name]
        inp.path[name] = _param(op, name, raw, schema, "invalid_parameter")
    for name, schema in op.query.items():
        values = request.query.getall(name, [])
        if len(values) > 1:  # a repeated parameter is ambiguous: refuse it
            raise ApiError(400, "invalid_parameter", f"{name}: give it once")
        if values:
            inp.query[name] = _param(op, name, values[0], schema, "invalid_parameter")
        elif "default" in schema:
            inp.query[name] = schema["default"]
    for name, schema in op.headers.items():
        value = request.headers.get(name)
        if value is not None:
            inp.headers[name] = _param(op, name, value, schema, "invalid_header")
    if op.raw_body:
        return inp
    if op.reads_body():
        limit = op.limit_bytes(request.app[APP]) if op.limit_bytes else body_limit_bytes(request)
        raw = await read_limited(request, limit)
        inp.body_bytes = len(raw)
        body = parse_json_object(raw, required=op.body is not None and op.body_required)
        if op.precheck is not None:
            op.precheck(request.app[APP], body, len(raw))
        check = op._body_check or _NO_FIELDS
        inp.body = check.validate(body) if (body or op.body_required) else body
    return inp


def _param(op: Operation, name: str, raw: str, schema: shapes.Schema, code: str) -> Any:
    """A path, query or header value: converted by the schema's type, then validated."""
    value: Any = raw
    kind = schema.get("type")
    if kind == "integer":
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(
                400, op.field_codes.get(name, code), f"{name}: must be an integer"
            ) from None
    elif kind == "number":
        try:
            value = float(raw)
        except ValueError:
            raise ApiError(400, code, f"{name}: must be a number") from None
    elif kind == "boolean":
        if raw not in ("true", "false", "1", "0"):
            raise ApiError(400, code, f"{name}: must be true or false")
        value = raw in ("true", "1")
    for error in op._param_checks[name].iter_errors(value):
        raise ApiError(400, op.field_codes.get(name, code), f"{name}: {_explain(error, schema)}")
    return value


class BodyCheck:
    """A compiled body schema. A tagged union (shapes.tagged) is checked in two steps: the tag,
    then the one variant it names, so errors speak of that variant's fields."""

    def __init__(
        self, schema: shapes.Schema, field_codes: dict[str, str], code: str | None = None
    ) -> None:
        self.schema = schema
        self.field_codes = field_codes
        self.code = code
        self.tag = schema.get("discriminator", {}).get("propertyName")
        if self.tag is not None:
            head = {k: v for k, v in schema.items() if k not in ("oneOf", "discriminator")}
            self.head = jsonschema_rs.Draft202012Validator(head)
            self.variants = {
                b["properties"][self.tag]["const"]: (b, jsonschema_rs.Draft202012Validator(b))
                for b in schema["oneOf"]
            }
        else:
            self.whole = jsonschema_rs.Draft202012Validator(schema)

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.tag is None:
            self._raise_first(self.whole, body, self.schema)
            return _drop_nulls(body, self.schema)
        self._raise_first(self.head, body, self.schema)
        branch, validator = self.variants[body[self.tag]]
        self._raise_first(validator, body, branch)
        return _drop_nulls(body, branch)

    def _raise_first(self, validator: Any, body: Any, schema: shapes.Schema) -> None:
        errors = list(validator.iter_errors(body))
        if not errors:
            return
        errors.sort(key=lambda e: self._rank(e))
        error = _api_error(errors[0], schema, self.field_codes, body)
        if self.code is not None:
            error.code = self.code
        raise error

    def _rank(self, e: Any) -> int:
        top = e.instance_path[0] if e.instance_path else None
        if top in self.field_codes:
            return 0
        return {"AdditionalProperties": 1, "Required": 3}.get(type(e.kind).__name__, 2)


_NO_FIELDS = BodyCheck(shapes.obj({}), {})


def _drop_nulls(body: dict[str, Any], schema: shapes.Schema) -> dict[str, Any]:
    """An optional field sent as null is the same as one left out."""
    required = set(schema.get("required", ()))
    return {k: v for k, v in body.items() if v is not None or k in required}


def _api_error(
    e: Any, schema: shapes.Schema, field_codes: dict[str, str], body: Any = None
) -> ApiError:
    kind = type(e.kind).__name__
    where = _where(e.instance_path, body)
    if kind == "AdditionalProperties":
        name = _where([*e.instance_path, e.kind.unexpected[0]], body)
        return ApiError(400, "unknown_field", f"{name}: unknown field")
    if kind == "Required":
        name = _where([*e.instance_path, e.kind.property], body)
        return ApiError(400, "missing_field", f"{name}: is required")
    sub = _subschema(schema, e.schema_path)
    branches = sub.get("anyOf" if kind == "AnyOf" else "oneOf", [])
    alternatives = [r for b in branches if isinstance(b, dict) for r in b.get("required", [])]
    if kind in ("OneOfNotValid", "AnyOf") and alternatives:  # none of the alternatives given
        name = _where([*e.instance_path, alternatives[0]], body)
        others = ", ".join(alternatives[1:])
        return ApiError(400, "missing_field", f"{name}: is required (or one of {others})")
    present = e.instance if isinstance(e.instance, dict) else {}
    given = [a for a in alternatives if present.get(a) is not None]
    if kind == "OneOfMultipleValid" and given:
        name = _where([*e.instance_path, given[-1]], body)
        return ApiError(400, "invalid_field", f"{name}: give only one of {', '.join(given)}")
    code = field_codes.get(e.instance_path[0], "invalid_field") if e.instance_path else None
    if code is None:
        code = "invalid_body"
    return ApiError(400, code, f"{where or 'body'}: {_explain(e, sub)}")


def _where(path: Any, instance: Any = None) -> str:
    """A field's name as errors give it: `media.caption`, `mentions[0]` (an object key that
    looks like a number is still a key: the instance says which it is)."""
    out, node = "", instance
    for part in path:
        if isinstance(node, list) or (node is None and isinstance(part, int)):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and isinstance(part, int) else None
        else:
            out += f".{part}" if out else str(part)
            node = node.get(str(part)) if isinstance(node, dict) else None
    return out


def _subschema(schema: shapes.Schema, schema_path: Any) -> shapes.Schema:
    """The schema object that holds the failing keyword (the path's last part)."""
    node: Any = schema
    for part in list(schema_path)[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return {}
    return node if isinstance(node, dict) else {}


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


def _explain(e: Any, sub: shapes.Schema) -> str:
    kind = type(e.kind).__name__
    if kind == "Type" and sub.get("type") == "null" and "description" in sub:
        return sub["description"]  # shapes.forbidden: a field this case does not take
    if kind == "Type":
        types = sub.get("type", [])
        types = [types] if isinstance(types, str) else [t for t in types if t != "null"]
        return "must be " + " or ".join(_TYPE_NAMES.get(t, t) for t in types)
    if "description" in sub and sub["description"].startswith("must"):
        return sub["description"]
    if kind in ("MinLength", "MaxLength"):
        return _range("must be", sub.get("minLength"), sub.get("maxLength"), "characters")
    if kind in ("Minimum", "Maximum"):
        return _range("must be", sub.get("minimum"), sub.get("maximum"), "")
    if kind in ("MinItems", "MaxItems"):
        return _range("must have", sub.get("minItems"), sub.get("maxItems"), "items")
    if kind == "Enum":
        return f"must be one of {[v for v in sub.get('enum', []) if v is not None]}"
    if kind == "Constant":
        return f"must be {json.dumps(sub.get('const'))}"
    if kind == "Pattern":
        return f"must match {sub.get('pattern')}"
    if kind == "UniqueItems":
        return "must not repeat an item"
    if kind in ("OneOfNotValid", "OneOfMultipleValid"):
        fields = [r for b in sub.get("oneOf", []) for r in b.get("required", [])]
        return f"give exactly one of {', '.join(fields)}" if fields else e.message
    return e.message


def _range(verb: str, lo: Any, hi: Any, unit: str) -> str:
    unit = f" {unit}" if unit else ""
    if lo is not None and hi is not None:
        return f"{verb} {lo} to {hi}{unit}" if unit else f"{verb} between {lo} and {hi}"
    if lo is not None:
        return f"{verb} at least {lo}{unit}"
    return f"{verb} at most {hi}{unit}"
