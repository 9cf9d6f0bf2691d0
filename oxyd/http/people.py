"""HTTP API v1: people and groups (design §13). Thin: validate, call oxyd.people, answer."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from oxyd.http import shapes as s
from oxyd.http.keys import APP
from oxyd.http.operation import Input, operation
from oxyd.http.replies import ApiError, ok
from oxyd.people import People
from oxyd.store.cursors import cursor_pattern
from oxyd.store.directory import CONTACTS_CURSOR

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


def _participants(raw: list[str]) -> list[str]:
    return list(dict.fromkeys(user_jid(p, f"participants[{i}]") for i, p in enumerate(raw)))


# ---- shapes: the request schemas (validation and OpenAPI) ----

CONTACTS_PAGE = s.cursor(cursor_pattern(*CONTACTS_CURSOR))

REFRESH = {
    **s.BOOL,
    "default": False,
    "description": "ask WhatsApp (or the device) again instead of the stored copy",
}
GROUP_PARAM = {
    "jid": s.string(
        max_length=80,
        pattern=r"^[0-9]{1,40}(-[0-9]{1,20})?@g\.us$",
        description="must be a group JID (...@g.us)",
    )
}
# The same language as PHONE_RE / USER_JID_RE (what user_jid() accepts), so the schema is exact.
USER_PATTERN = r"^(\+?[0-9]{6,15}|[0-9]{1,20}(:[0-9]{1,3})?@(s\.whatsapp\.net|lid))$"
# phone_digits(): spaces anywhere, one leading +, 6 to 15 digits.
PHONE_PATTERN = r"^ *(\+ *)?([0-9] *){6,15}$"
CONTACT_PARAM = {
    "jid": s.string(
        max_length=80,
        pattern=USER_PATTERN,
        description="must be a phone number or a JID (...@s.whatsapp.net, ...@lid)",
    )
}
PARTICIPANTS = s.array(
    s.string(max_length=80, pattern=USER_PATTERN, description="must be a phone number or a JID"),
    max_items=MAX_PARTICIPANTS,
)
ENGINE_ERRORS = (409, 504)  # not connected; WhatsApp did not answer in time
GROUP = s.json_response(s.ref("Group"))
INVITE = s.json_response(s.obj({"jid": s.STR, "link": s.STR}, ("jid", "link"), closed=False))


# ---- lookup and contacts ----


@operation(
    table.post,
    "/v1/tenants/{id}/lookup",
    "Which numbers are on WhatsApp (answers cached for lookup.cache_s)",
    ok=(
        200,
        s.json_response(
            s.obj({"results": s.array(s.ref("LookupResult"))}, ("results",), closed=False)
        ),
    ),
    errors=(*ENGINE_ERRORS, 429),
    body=s.obj(
        {
            "phones": s.array(
                s.string(
                    max_length=32,
                    pattern=PHONE_PATTERN,
                    description="must be a phone number in international format",
                ),
                min_items=1,
                max_items=MAX_LOOKUP,
            )
        },
        ("phones",),
    ),
)
async def lookup(request: web.Request, inp: Input) -> web.Response:
    phones = inp.body["phones"]
    digits = [phone_digits(p, f"phones[{i}]") for i, p in enumerate(phones)]
    results = await _people(request).lookup(inp.tenant, digits)
    for given, result in zip(phones, results, strict=True):
        result["phone"] = given  # answered in the caller's own spelling
    return ok({"results": results})


@operation(
    table.get,
    "/v1/tenants/{id}/contacts",
    "Contacts the store knows (push, saved and business names), ordered by JID",
    ok=(200, s.json_response(s.page_of("contacts", s.ref("Contact")))),
    errors=ENGINE_ERRORS,
    query={"limit": s.integer(1, 1000, default=100), "cursor": CONTACTS_PAGE, "refresh": REFRESH},
    field_codes={"cursor": "invalid_cursor"},
)
async def list_contacts(request: web.Request, inp: Input) -> web.Response:
    q = inp.query
    try:
        contacts, nxt = await _people(request).contacts(
            inp.tenant, q["limit"], q.get("cursor") or None, q["refresh"]
        )
    except (ValueError, TypeError):
        raise ApiError(400, "invalid_cursor", "cursor: not a cursor this API returned") from None
    return ok({"contacts": contacts, "next_cursor": nxt})


@operation(
    table.get,
    "/v1/tenants/{id}/contacts/{jid}",
    "One contact, with its other identity (lid of a phone JID, phone of a LID)",
    ok=(200, s.json_response(s.ref("Contact"))),
    errors=(*ENGINE_ERRORS, 429),
    path_params=CONTACT_PARAM,
    query={"refresh": REFRESH},
)
async def get_contact(request: web.Request, inp: Input) -> web.Response:
    jid = user_jid(inp.path["jid"], "jid")
    found = await _people(request).contact(inp.tenant, jid, inp.query["refresh"])
    if found is None:
        raise ApiError(404, "contact_not_found", f"nothing is known about {jid}")
    return ok(found)


@operation(
    table.get,
    "/v1/tenants/{id}/contacts/{jid}/picture",
    "The contact's profile picture (cached with its WhatsApp picture id; ETag)",
    ok=(200, {"description": "The image", "content": {"image/*": {"schema": {}}}}),
    errors=(*ENGINE_ERRORS, 429),
    path_params=CONTACT_PARAM,
    responses={304: {"description": "Not modified (If-None-Match matched the ETag)"}},
)
async def get_picture(request: web.Request, inp: Input) -> web.Response:
    jid = user_jid(inp.path["jid"], "jid")
    found = await _people(request).picture(inp.tenant, jid)
    if found is None:
        raise ApiError(404, "picture_not_found", f"{jid} has no profile picture")
    data, mime, picture_id = found
    etag = f'"{picture_id}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type=mime, headers=headers)


# ---- groups ----


@operation(
    table.get,
    "/v1/tenants/{id}/groups",
    "The account's groups (stored copy, fetched once per run; ?refresh=true asks again)",
    ok=(
        200,
        s.json_response(s.obj({"groups": s.array(s.ref("Group"))}, ("groups",), closed=False)),
    ),
    errors=ENGINE_ERRORS,
    query={"refresh": REFRESH},
)
async def list_groups(request: web.Request, inp: Input) -> web.Response:
    return ok({"groups": await _people(request).groups(inp.tenant, inp.query["refresh"])})


@operation(
    table.post,
    "/v1/tenants/{id}/groups",
    "Create a group (a result per participant: WhatsApp refuses some)",
    ok=(201, GROUP),
    errors=ENGINE_ERRORS,
    body=s.obj(
        {
            "subject": s.string(
                min_length=1,
                max_length=MAX_SUBJECT_CHARS,
                pattern=r"\S",
                description=f"must be 1 to {MAX_SUBJECT_CHARS} characters",
            ),
            "participants": PARTICIPANTS,
        },
        ("subject",),
    ),
)
async def create_group(request: web.Request, inp: Input) -> web.Response:
    subject = inp.body["subject"].strip()
    participants = _participants(inp.body.get("participants") or [])
    return ok(await _people(request).create_group(inp.tenant, subject, participants), 201)


@operation(
    table.post,
    "/v1/tenants/{id}/groups/join",
    "Join a group by its invite link",
    ok=(200, GROUP),
    errors=(403, *ENGINE_ERRORS),
    body=s.obj(
        {
            "invite": s.string(
                max_length=128,
                pattern=INVITE_RE.pattern.join("^$"),
                description="must be https://chat.whatsapp.com/<code> or the code",
            )
        },
        ("invite",),
    ),
)
async def join_group(request: web.Request, inp: Input) -> web.Response:
    match = INVITE_RE.fullmatch(inp.body["invite"].strip())
    if match is None:
        raise ApiError(
            400, "invalid_field", "invite: must be https://chat.whatsapp.com/<code> or the code"
        )
    return ok(await _people(request).join(inp.tenant, match.group(1)))


@table.route("*", "/v1/tenants/{id}/groups/join")
async def join_other_methods(request: web.Request) -> web.Response:
    """Only POST: without this, GET .../groups/join would reach GET .../groups/{jid} and answer
    400 for the jid "join" instead of 405 naming the one method this path has."""
    raise ApiError(
        405,
        "method_not_allowed",
        f"{request.method} is not allowed here; allowed: POST",
        {"Allow": "POST"},
    )


@operation(
    table.get,
    "/v1/tenants/{id}/groups/{jid}",
    "A group: subject, description, participants with roles and LIDs",
    ok=(200, GROUP),
    errors=ENGINE_ERRORS,
    path_params=GROUP_PARAM,
)
async def get_group(request: web.Request, inp: Input) -> web.Response:
    return ok(await _people(request).group(inp.tenant, inp.path["jid"]))


@operation(
    table.post,
    "/v1/tenants/{id}/groups/{jid}/participants",
    "Add, remove, promote or demote participants (a result for each)",
    ok=(
        200,
        s.json_response(
            s.obj(
                {
                    "jid": s.STR,
                    "action": s.STR,
                    "results": s.array(s.ref("ParticipantResult")),
                    "group": s.ref("Group"),
                },
                ("jid", "action", "results"),
                closed=False,
            )
        ),
    ),
    errors=(403, *ENGINE_ERRORS),
    path_params=GROUP_PARAM,
    body=s.obj(
        {
            "action": s.string(enum=ACTIONS),
            "participants": {**PARTICIPANTS, "minItems": 1},
        },
        ("action", "participants"),
    ),
)
async def change_participants(request: web.Request, inp: Input) -> web.Response:
    participants = _participants(inp.body["participants"])
    people = _people(request)
    return ok(
        await people.participants(inp.tenant, inp.path["jid"], inp.body["action"], participants)
    )


@operation(
    table.get,
    "/v1/tenants/{id}/groups/{jid}/invite",
    "The group's invite link",
    ok=(200, INVITE),
    errors=(403, *ENGINE_ERRORS),
    path_params=GROUP_PARAM,
)
async def get_invite(request: web.Request, inp: Input) -> web.Response:
    return ok(await _people(request).invite(inp.tenant, inp.path["jid"], reset=False))


@operation(
    table.delete,
    "/v1/tenants/{id}/groups/{jid}/invite",
    "Reset the invite link (the old one stops working)",
    ok=(200, INVITE),
    errors=(403, *ENGINE_ERRORS),
    path_params=GROUP_PARAM,
)
async def reset_invite(request: web.Request, inp: Input) -> web.Response:
    return ok(await _people(request).invite(inp.tenant, inp.path["jid"], reset=True))


@operation(
    table.post,
    "/v1/tenants/{id}/groups/{jid}/leave",
    "Leave the group",
    ok=(200, s.json_response(s.obj({"jid": s.STR, "left": s.BOOL}, ("jid", "left"), closed=False))),
    errors=(403, *ENGINE_ERRORS),
    path_params=GROUP_PARAM,
    body=s.obj({}),
    body_required=False,
)
async def leave_group(request: web.Request, inp: Input) -> web.Response:
    return ok(await _people(request).leave(inp.tenant, inp.path["jid"]))
