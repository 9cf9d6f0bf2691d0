"""GET /v1/openapi.json: the OpenAPI 3.1 description of the control port, built from the router.

Every route is registered through operation.py and carries the very schemas the server validates
with; this module arranges them into the document (answers' shared shapes: components.py), so a
route cannot be served undocumented or validated differently from what is published. Links
(links.py) tell clients and schemathesis' stateful phase where the ids of an answer lead. The
document is open (no token): it holds no data, and tools read it before they have a token.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from oxyd import __version__
from oxyd.http import components, links
from oxyd.http import shapes as s
from oxyd.http.operation import Input, Operation, operation

table = web.RouteTableDef()

ERROR_TEXT = {
    400: "Malformed input (the message names the field or parameter)",
    401: "No token or an invalid token",
    403: "The route needs the admin token",
    404: "No such tenant (or not visible to this token), or no such thing of it",
    409: "Conflict with the tenant's state",
    413: "Body too large",
    416: "Range not satisfiable",
    429: "Rate limit reached; see Retry-After",
    503: "Not available right now",
    504: "WhatsApp did not answer in time",
}
DOCUMENT: web.AppKey[dict] = web.AppKey("oxyd_openapi_document", dict)


def _errors(statuses: Iterable[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in sorted(set(statuses)):
        resp = s.json_response(s.ref("Error"), ERROR_TEXT.get(status, "Error"))
        if status == 429:
            resp["headers"] = {
                "Retry-After": {"schema": s.integer(1), "description": "seconds to wait"}
            }
        out[str(status)] = resp
    return out


def _param(name: str, where: str, schema: s.Schema, required: bool) -> dict[str, Any]:
    param = {"name": name, "in": where, "required": required, "schema": schema}
    if "description" in schema:
        param["description"] = schema["description"]
    return param


def describe(op: Operation, operation_id: str) -> dict[str, Any]:
    """One operation object of the document."""
    out: dict[str, Any] = {"operationId": operation_id, "summary": op.summary}
    if op.access == "admin":
        out["summary"] += " (admin token only)"
    if op.description:
        out["description"] = op.description
    if op.tags:
        out["tags"] = list(op.tags)
    params = []
    if op.tenant_route:
        params.append(_param("id", "path", s.string(pattern=s.TENANT_ID_PATTERN), True))
    params += [_param(n, "path", sc, True) for n, sc in op.path_params.items()]
    params += [_param(n, "query", sc, False) for n, sc in op.query.items()]
    params += [_param(n, "header", sc, False) for n, sc in op.headers.items()]
    if params:
        out["parameters"] = params
    statuses = set(op.errors)
    if op.access != "open":
        statuses.add(401)
    if op.access == "admin":
        statuses.add(403)
    if op.tenant_route:
        statuses.add(400)  # a malformed id
        if op.tenant_exists:
            statuses.add(404)  # not a tenant this token sees
    if op.path_params or op.query or op.headers:
        statuses.add(400)
    if op.request_content is not None:
        statuses |= {400, 413}
        out["requestBody"] = {"required": True, "content": op.request_content}
    elif op.reads_body():
        statuses |= {400, 413}
        schema = op.body if op.body is not None else s.obj({})
        out["requestBody"] = {
            "required": op.body is not None and op.body_required,
            "content": {"application/json": {"schema": schema}},
        }
    ok_status, ok_response = op.ok
    responses = {str(ok_status): ok_response}
    responses.update({str(k): v for k, v in op.responses.items()})
    responses.update(_errors(statuses - {int(k) for k in responses}))
    out["responses"] = responses
    if op.access == "open":
        out["security"] = []
    return out


def operations(routes: Iterable[Any]) -> list[tuple[Operation, str]]:
    """(Operation, handler name) of every route that has one; HEAD is implied by GET."""
    found = []
    for route in routes:
        op = getattr(route.handler, "operation", None)
        if op is not None and route.method != "HEAD":
            found.append((op, route.handler.__name__))
    return found


def document(routes: Iterable[Any]) -> dict[str, Any]:
    """The document for these routes (a router's routes, or the RouteDefs of route tables)."""
    paths: dict[str, dict[str, Any]] = {}
    for op, name in operations(routes):
        paths.setdefault(op.path, {})[op.method.lower()] = describe(op, name)
    links.add(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "oxyd control port",
            "version": __version__,
            "description": "Many WhatsApp sessions, one daemon. Errors are always "
            '{"error": {"code", "message"}}. Authorization: Bearer <admin or tenant token>.',
        },
        "paths": paths,
        "components": {
            "schemas": dict(components.SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


@operation(
    table.get,
    "/v1/openapi.json",
    "This document",
    access="open",
    ok=(200, s.json_response({"type": "object"})),
)
async def openapi_json(request: web.Request, inp: Input) -> web.Response:
    doc = request.app.get(DOCUMENT)
    if doc is None:  # make_app builds it once, from the routes the app really serves
        doc = document(request.app.router.routes())
    return web.json_response(doc)
