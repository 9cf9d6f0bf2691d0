"""The send and simulate routes refuse exactly what their published schema refuses: each body
below is checked against GET /v1/openapi.json (jsonschema) and sent, and the two agree. The
refusals keep their codes and name their fields."""

from __future__ import annotations

import base64
import json

import jsonschema_rs
import pytest
from http_helpers import Harness

TO = "15551234567"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
WEBP = base64.b64encode(b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 8).decode()
IMG = {"type": "image", "data_b64": PNG}
STICKER = {"type": "sticker", "data_b64": WEBP}
BAD = "invalid_field"

# (body, refused field or None, code)
SENDS = [
    ({"to": TO, "text": "hi"}, None, None),
    ({"to": "+" + TO, "text": "hi", "media": None, "link_preview": True}, None, None),
    ({"to": TO, "text": " \u3000\x1c"}, "text", BAD),  # only spaces (str.isspace)
    ({"to": TO, "text": "\ufeff"}, None, None),  # U+FEFF is no space to Python: a text
    ({"to": TO}, "text", "missing_field"),
    ({"to": TO, "text": "x", "poll": {"question": "q", "options": ["a", "b"]}}, "poll", None),
    ({"to": TO, "text": None, "media": None}, "text", "missing_field"),
    ({"to": TO, "media": IMG, "link_preview": True}, "link_preview", BAD),
    ({"to": TO, "media": {**IMG, "caption": "c"}}, None, None),
    ({"to": TO, "media": {**STICKER, "caption": "c"}}, "media.caption", BAD),
    ({"to": TO, "media": STICKER}, None, None),
    ({"to": TO, "media": {"type": "image", "data_b64": "abc"}}, "media.data_b64", BAD),
    ({"to": TO, "media": {"type": "image", "data_b64": ""}}, "media.data_b64", BAD),
    ({"to": TO, "media": {"type": "gif", "data_b64": PNG}}, "media.type", BAD),
    ({"to": TO, "media": {"data_b64": PNG, "caption": "c"}}, "media.type", "missing_field"),
    ({"to": TO, "location": {"lat": 91, "lng": 0}}, "location.lat", BAD),
    ({"to": TO, "location": {"lat": True, "lng": 0}}, "location.lat", BAD),
    ({"to": TO, "location": {"lat": 1, "lng": 2, "name": "  "}}, "location.name", BAD),
    ({"to": TO, "contact": {"name": "Ann", "phone": "+49 (151) 111-111"}}, None, None),
    ({"to": TO, "contact": {"name": "Ann;x", "phone": "4915111111"}}, "contact.name", BAD),
    ({"to": TO, "contact": {"name": "Ann", "phone": "12345"}}, "contact.phone", BAD),
    ({"to": TO, "poll": {"question": "q", "options": ["a", "a"]}}, "poll.options", BAD),
    ({"to": TO, "poll": {"question": "q", "options": ["a"]}}, "poll.options", BAD),
    ({"to": TO, "poll": {"question": "q", "options": ["a", "b"], "x": 1}}, "poll.x", None),
    ({"to": TO, "text": "x", "mentions": ["nope"]}, "mentions[0]", BAD),
    ({"to": TO, "text": "x", "mentions": [TO] * 101}, "mentions", BAD),
    ({"to": TO, "text": "x", "reply_to": " "}, "reply_to", BAD),
    ({"to": "12345", "text": "x"}, "to", BAD),
]  # fmt: skip

SIM_MEDIA = {"type": "image", "size": 10}
SIMULATES = [
    ({"action": "message", "chat": TO, "text": "x"}, None),
    ({"action": "message", "chat": TO}, "text"),
    ({"action": "message", "chat": TO, "text": None, "media": SIM_MEDIA}, None),
    ({"action": "message", "chat": TO, "text": "x", "media": None, "expired": None}, None),
    ({"action": "message", "chat": TO, "media": {**SIM_MEDIA, "data_b64": ""}}, "media.size"),
    ({"action": "message", "chat": TO, "media": {**IMG, "data_b64": "a"}}, "media.data_b64"),
    ({"action": "message", "chat": TO, "text": "x", "count": 0}, "count"),
    ({"action": "message", "chat": "", "text": "x"}, "chat"),
    ({"action": "group", "jid": "123@s.whatsapp.net", "subject": "s", "participants": []}, "jid"),
    ({"action": "group", "jid": "123", "subject": "s", "participants": [TO]}, None),
    ({"action": "identity", "phone": TO, "lid": "123@s.whatsapp.net"}, "lid"),
    ({"action": "identity", "phone": TO, "lid": None}, None),
    ({"action": "contacts", "phones": [TO], "names": {TO: 5}}, "names." + TO),
    ({"action": "receipt", "ids": ["1"] * 1001, "type": "read", "chat": TO}, "ids"),
    ({"action": "ban"}, "expire_s"),
    ({"action": "nope"}, "action"),
    ({"action": "stall", "x": 1}, "x"),
]  # fmt: skip


@pytest.fixture
async def h(tmp_path, monkeypatch):
    harness = await Harness.start(tmp_path, monkeypatch)
    await harness.add("sim")
    yield harness
    await harness.close()


async def _schema(h, path: str) -> jsonschema_rs.Draft202012Validator:
    doc = await (await h.req("GET", "/v1/openapi.json", token=None)).json()
    body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema_rs.Draft202012Validator(body)


@pytest.mark.parametrize("body, field, code", SENDS)
async def test_send_refuses_what_the_schema_refuses(h, body, field, code):
    valid = (await _schema(h, "/v1/tenants/{id}/messages")).is_valid(body)
    r = await h.req("POST", "/v1/tenants/sim/messages", json=body)
    answer = await r.json()
    assert valid == (field is None), (body, answer)
    if field is None:
        assert r.status == 202, answer
    else:
        assert r.status == 400, answer
        assert answer["error"]["message"].startswith(field + ":"), answer
        assert code is None or answer["error"]["code"] == code, answer


@pytest.mark.parametrize("body, field", SIMULATES)
async def test_simulate_refuses_what_the_schema_refuses(h, body, field):
    valid = (await _schema(h, "/v1/tenants/{id}/simulate")).is_valid(body)
    r = await h.req("POST", "/v1/tenants/sim/simulate", json=body)
    answer = await r.json()
    assert valid == (field is None), (body, answer)
    if field is None:
        assert r.status == 202, answer
    else:
        assert r.status == 400 and answer["error"]["code"] == "invalid_action", answer
        assert answer["error"]["message"].startswith(field + ":"), answer


async def test_parameters_keep_their_codes(h):
    msgs = "/v1/tenants/sim/messages"
    body = {"to": TO, "text": "x"}
    r = await h.req("POST", msgs, json=body, headers={"Idempotency-Key": "has space"})
    assert (await r.json())["error"]["code"] == "invalid_idempotency_key"
    r = await h.req("POST", msgs + "?wait=31", json=body)
    assert (await r.json())["error"]["code"] == "invalid_parameter"
    r = await h.req("POST", "/v1/tenants/sim/chats/nope/presence", json={"state": "paused"})
    err = (await r.json())["error"]
    assert r.status == 400 and err["code"] == "invalid_field" and err["message"].startswith("chat")
    r = await h.req("DELETE", msgs + "/X1", json={"x": 1})
    assert (await r.json())["error"]["code"] == "unknown_field"


async def test_a_lone_surrogate_is_400_not_500(h):
    for path, body in [
        ("/v1/tenants", b'{"id": "\\ud800"}'),
        ("/v1/tenants/sim/messages", b'{"to": "15551234", "text": "\\udc00"}'),
        ("/v1/tenants/sim/simulate", b'{"action": "message", "chat": "1", "text": "\\ud800"}'),
    ]:
        r = await h.req("POST", path, data=body, headers={"Content-Type": "application/json"})
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
    # an emoji written as its surrogate pair is fine
    pair = json.dumps({"to": TO, "text": "\U0001f44d"}).encode()
    assert b"\\ud83d" in pair
    r = await h.req("POST", "/v1/tenants/sim/messages", data=pair)
    assert r.status == 202
