"""HTTP API v1: people and groups (design §13). Thin: validate, call oxyd.people, answer."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from oxyd.http.access import tenant_id
from oxyd.http.inputs import bool_param, int_param, json_body
from oxyd.http.keys import APP
from oxyd.http.replies import ApiError, ok
from oxyd.people import People

table = web.RouteTableDef()

PEOPLE: web.AppKey[People] = web.AppKey("oxyd_people", People)
MAX_LOOKUP = 50
MAX_PARTICIPANTS = 1024
MAX_SUBJECT_CHARS = 100
PHONE_RE = re.compile(r"\+?[0-9]{6,15}")
USER_JID_RE = re.compile(r"([0-9]{1,20})(?::[0-9]{1,3})?@(s\.whatsapp\.net|lid)")
GROUP_JID_RE = re.compile(r"[0-9]{1,40}(?:-[0-9]{1,20})?@g\.us")
INVITE_RE = re.compile(r"(?:https?://chat\.whatsapp\.com/)?([0-9A-Za-z]{10,40})")
ACTIONS = ("add", "remove", "promote", "demote")


def setup(web_app: web.Application) -> None:
    people = web_app[PEOPLE] = People(web_app[APP].supervisor)
    web_app[APP].extras["people"] = people  # for /metrics
    web_app.add_routes(table)


def _people(request: web.Request) -> People:
    return request.app[PEOPLE]


def phone_digits(value: Any, field: str) -> str:
    if not isinstance(value, str) or not PHONE_RE.fullmatch(value.replace(" ", "")):
        raise ApiError(
            400, "invalid_field", f"{field}: must be a phone number in international format"
        )
    return value.replace(" ", "").lstrip("+")


def user_jid(value: Any, field: str) -> str:
    """A user's JID (device part dropped) from a JID or a phone number."""
    if isinstance(value, str):
        if PHONE_RE.fullmatch(value):
            return f"{value.lstrip('+')}@s.whatsapp.net"
        match = USER_JID_RE.fullmatch(value)
        if match:
            return f"{match.group(1)}@{match.group(2)}"
    raise ApiError(
        400, "invalid_field", f"{field}: must be a phone number or a JID (...@s.whatsapp.net, @lid)"
    )


def group_jid(request: web.Request) -> str:
    jid = request.match_info["jid"]
    if not GROUP_JID_RE.fullmatch(jid):
        raise ApiError(400, "invalid_parameter", "jid: must be a group JID (...@g.us)")
    return jid


def _participants(body: dict[str, Any]) -> list[str]:
    raw = body["participants"]
    if len(raw) > MAX_PARTICIPANTS:
        raise ApiError(
            400, "invalid_field", f"participants: at most {MAX_PARTICIPANTS} in one request"
        )
    return list(dict.fromkeys(user_jid(p, f"participants[{i}]") for i, p in enumerate(raw)))


# ---- lookup and contacts ----


@table.post("/v1/tenants/{id}/lookup")
async def lookup(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    body = await json_body(request, allowed={"phones": list}, required=("phones",))
    phones = body["phones"]
    if not phones or len(phones) > MAX_LOOKUP:
        raise ApiError(400, "invalid_field", f"phones: give 1 to {MAX_LOOKUP} numbers")
    digits = [phone_digits(p, f"phones[{i}]") for i, p in enumerate(phones)]
    results = await _people(request).lookup(tid, digits)
    for given, result in zip(phones, results, strict=True):
        result["phone"] = given  # answered in the caller's own spelling
    return ok({"results": results})


@table.get("/v1/tenants/{id}/contacts")
async def list_contacts(request: web.Request) -> web.Response:
    from oxyd.http.routes_data import _cursor

    tid = tenant_id(request)
    limit = int_param(request, "limit", 100, 1, 1000)
    cursor = _cursor(request)
    try:
        contacts, nxt = await _people(request).contacts(
            tid, limit, cursor, bool_param(request, "refresh")
        )
    except (ValueError, TypeError):
        raise ApiError(400, "invalid_cursor", "cursor: not a cursor this API returned") from None
    return ok({"contacts": contacts, "next_cursor": nxt})


@table.get("/v1/tenants/{id}/contacts/{jid}")
async def get_contact(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    jid = user_jid(request.match_info["jid"], "jid")
    found = await _people(request).contact(tid, jid, bool_param(request, "refresh"))
    if found is None:
        raise ApiError(404, "contact_not_found", f"nothing is known about {jid}")
    return ok(found)


@table.get("/v1/tenants/{id}/contacts/{jid}/picture")
async def get_picture(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    jid = user_jid(request.match_info["jid"], "jid")
    found = await _people(request).picture(tid, jid)
    if found is None:
        raise ApiError(404, "picture_not_found", f"{jid} has no profile picture")
    data, mime, picture_id = found
    etag = f'"{picture_id}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type=mime, headers=headers)


# ---- groups ----


@table.get("/v1/tenants/{id}/groups")
async def list_groups(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    refresh = bool_param(request, "refresh")
    return ok({"groups": await _people(request).groups(tid, refresh)})


@table.post("/v1/tenants/{id}/groups")
async def create_group(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    body = await json_body(
        request, allowed={"subject": str, "participants": list}, required=("subject",)
    )
    subject = body["subject"].strip()
    if not subject or len(subject) > MAX_SUBJECT_CHARS:
        raise ApiError(
            400, "invalid_field", f"subject: must be 1 to {MAX_SUBJECT_CHARS} characters"
        )
    participants = _participants({"participants": body.get("participants") or []})
    return ok(await _people(request).create_group(tid, subject, participants), 201)


@table.post("/v1/tenants/{id}/groups/join")
async def join_group(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    body = await json_body(request, allowed={"invite": str}, required=("invite",))
    match = INVITE_RE.fullmatch(body["invite"].strip())
    if match is None:
        raise ApiError(
            400, "invalid_field", "invite: must be https://chat.whatsapp.com/<code> or the code"
        )
    return ok(await _people(request).join(tid, match.group(1)))


@table.get("/v1/tenants/{id}/groups/{jid}")
async def get_group(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    return ok(await _people(request).group(tid, group_jid(request)))


@table.post("/v1/tenants/{id}/groups/{jid}/participants")
async def change_participants(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    jid = group_jid(request)
    body = await json_body(
        request,
        allowed={"action": str, "participants": list},
        required=("action", "participants"),
    )
    if body["action"] not in ACTIONS:
        raise ApiError(400, "invalid_field", f"action: must be one of {list(ACTIONS)}")
    participants = _participants(body)
    if not participants:
        raise ApiError(400, "invalid_field", "participants: give at least one")
    return ok(await _people(request).participants(tid, jid, body["action"], participants))


@table.get("/v1/tenants/{id}/groups/{jid}/invite")
async def get_invite(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    return ok(await _people(request).invite(tid, group_jid(request), reset=False))


@table.delete("/v1/tenants/{id}/groups/{jid}/invite")
async def reset_invite(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    return ok(await _people(request).invite(tid, group_jid(request), reset=True))


@table.post("/v1/tenants/{id}/groups/{jid}/leave")
async def leave_group(request: web.Request) -> web.Response:
    from oxyd.http.inputs import no_body

    tid = tenant_id(request)
    jid = group_jid(request)
    await no_body(request)
    return ok(await _people(request).leave(tid, jid))
