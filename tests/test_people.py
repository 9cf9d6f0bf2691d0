"""People and groups on a real App and control port with simulator tenants (design §13):
lookup cache and rate, LID map fill and backfill, contacts, pictures, groups, settings."""

from __future__ import annotations

import json
import sqlite3

import pytest
from helpers import until
from http_helpers import Harness


@pytest.fixture
async def h(tmp_path, monkeypatch):
    harness = await Harness.start(tmp_path, monkeypatch, OXYD_SEND_BURST="50")
    yield harness
    await harness.close()


async def call(h, method, path, body=None, status=200, token=...):
    kw = {"json": body} if body is not None else {}
    if token is not ...:
        kw["token"] = token
    r = await h.req(method, path, **kw)
    data = await r.json() if r.content_type == "application/json" else await r.read()
    assert r.status == status, (r.status, data)
    return data


async def sim(h, tid, **action):
    return await call(h, "POST", f"/v1/tenants/{tid}/simulate", action, 202)


async def server_calls(h, tid) -> dict:
    return (await sim(h, tid, action="server"))["calls"]


def outbox(h, tid: str, etype: str) -> list[dict]:
    con = sqlite3.connect(h.app.cfg.data_dir / "oxyd.sqlite3")
    try:
        rows = con.execute(
            "SELECT body FROM outbox WHERE tenant=? AND type=? ORDER BY id", (tid, etype)
        ).fetchall()
    finally:
        con.close()
    return [json.loads(r[0])["data"] for r in rows]


async def hook(h, tid):
    """A webhook nobody answers: its events stay in the outbox, where the tests read them."""
    await call(
        h, "PUT", f"/v1/tenants/{tid}/webhook", {"url": "http://127.0.0.1:9/x", "secret": "s"}
    )


async def test_lookup_is_cached_and_counted(h):
    await h.add("a")
    known = await sim(h, "a", action="contacts", phones=["15550001111", "15550002222"])
    lid = known["contacts"][0]["lid"]
    body = {"phones": ["+15550001111", "15550002222", "15550009999"]}
    first = await call(h, "POST", "/v1/tenants/a/lookup", body)
    assert first["results"] == [
        {"phone": "+15550001111", "on_whatsapp": True, "jid": "15550001111@s.whatsapp.net",
         "lid": lid},
        {"phone": "15550002222", "on_whatsapp": True, "jid": "15550002222@s.whatsapp.net",
         "lid": known["contacts"][1]["lid"]},
        {"phone": "15550009999", "on_whatsapp": False, "jid": None, "lid": None},
    ]  # fmt: skip
    assert (await server_calls(h, "a"))["lookup"] == 1
    again = await call(h, "POST", "/v1/tenants/a/lookup", body)
    assert again == first
    assert (await server_calls(h, "a"))["lookup"] == 1  # served from oxyd.sqlite3
    # A new number costs one query (for the new one only); the known ones stay cached.
    await call(h, "POST", "/v1/tenants/a/lookup", {"phones": ["15550001111", "15550003333"]})
    assert (await server_calls(h, "a"))["lookup"] == 2
    metrics = (await call(h, "GET", "/metrics")).decode()
    assert 'oxyd_whatsapp_requests_total{method="lookup",tenant="a"} 2.0' in metrics
    assert 'oxyd_lookup_numbers_total{source="cache"} 4.0' in metrics
    assert 'oxyd_lookup_numbers_total{source="whatsapp"} 4.0' in metrics


async def test_lookup_refuses_bad_input(h):
    await h.add("a")
    phones = [f"1555000{i:04d}" for i in range(51)]
    err = await call(h, "POST", "/v1/tenants/a/lookup", {"phones": phones}, 400)
    assert err["error"]["code"] == "invalid_field" and "phones" in err["error"]["message"]
    for bad in ({"phones": []}, {"phones": ["abc"]}, {"phones": "155"}, {"x": 1}, {}):
        await call(h, "POST", "/v1/tenants/a/lookup", bad, 400)
    assert (await server_calls(h, "a")).get("lookup", 0) == 0


async def test_lookup_spends_the_send_bucket(tmp_path, monkeypatch):
    h = await Harness.start(tmp_path, monkeypatch, OXYD_SEND_BURST="2")
    try:
        await h.add("a")
        for i in range(2):
            await call(h, "POST", "/v1/tenants/a/lookup", {"phones": [f"1555000000{i}"]})
        r = await h.req("POST", "/v1/tenants/a/lookup", json={"phones": ["15550000009"]})
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        # Cached answers cost nothing, even with the bucket empty.
        await call(h, "POST", "/v1/tenants/a/lookup", {"phones": ["15550000000"]})
    finally:
        await h.close()


async def test_lookup_needs_a_connected_tenant(h):
    await h.add("a")
    await call(h, "POST", "/v1/tenants/a/stop", status=202)
    err = await call(h, "POST", "/v1/tenants/a/lookup", {"phones": ["15550001111"]}, 409)
    assert err["error"]["code"] == "not_connected"


async def test_lid_sender_gets_its_phone_when_the_mapping_is_learned(h):
    await h.add("a")
    await hook(h, "a")
    phone = "15557654321@s.whatsapp.net"
    lid = (await sim(h, "a", action="contacts", phones=["15557654321"]))["contacts"][0]["lid"]
    await sim(h, "a", action="message", chat=lid, text="before")
    await until(lambda: h.app.writer.stats.stored == 1)
    msgs = (await call(h, "GET", "/v1/tenants/a/messages"))["messages"]
    assert msgs[0]["sender"] == lid and msgs[0]["sender_alt"] is None
    await sim(h, "a", action="identity", phone="15557654321")  # whatsmeow learned it

    async def backfilled():
        m = (await call(h, "GET", "/v1/tenants/a/messages"))["messages"][0]
        return m["sender_alt"] == phone and m["chat_alt"] == phone

    await until(backfilled, what="backfill")
    assert outbox(h, "a", "contact.identity") == [
        {"lid": lid, "phone": phone, "messages_updated": 2}  # sender_alt and chat_alt
    ]
    await sim(h, "a", action="message", chat=lid, text="after")
    await until(lambda: h.app.writer.stats.stored == 2)
    newest = (await call(h, "GET", "/v1/tenants/a/messages"))["messages"][0]
    assert newest["text"] == "after" and newest["sender_alt"] == phone
    received = outbox(h, "a", "message.received")
    assert received[-1]["sender_alt"] == phone  # the webhook carries it too
    # Learning the same mapping again is no news.
    await sim(h, "a", action="identity", phone="15557654321")
    await until(lambda: h.app.writer.depth == 0)
    assert len(outbox(h, "a", "contact.identity")) == 1


async def test_contacts_with_names_and_identities(h):
    await h.add("a")
    await sim(h, "a", action="contacts", phones=["15550001111"], names={"15550001111": "Ann Lee"})
    await sim(h, "a", action="message", chat="15550002222", text="hi")  # push name only
    await until(lambda: h.app.writer.stats.stored == 1)
    await call(h, "POST", "/v1/tenants/a/lookup", {"phones": ["15550001111"]})  # learns the LID

    async def listed():
        body = await call(h, "GET", "/v1/tenants/a/contacts")
        return body if len(body["contacts"]) == 2 and body["contacts"][0]["lid"] else None

    body = await until(listed, what="contacts")
    ann, other = body["contacts"]
    assert ann["jid"] == "15550001111@s.whatsapp.net" and ann["name"] == "Ann Lee"
    assert ann["first_name"] == "Ann" and ann["lid"].endswith("@lid")
    assert ann["phone"] == ann["jid"]
    assert other["push_name"] == "Simulated Contact" and other["name"] is None
    page = await call(h, "GET", "/v1/tenants/a/contacts?limit=1")
    assert len(page["contacts"]) == 1 and page["next_cursor"]
    rest = await call(h, "GET", f"/v1/tenants/a/contacts?limit=1&cursor={page['next_cursor']}")
    assert rest["contacts"][0]["jid"] == other["jid"] and rest["next_cursor"] is None
    one = await call(h, "GET", "/v1/tenants/a/contacts/15550001111")
    assert one["lid"] == ann["lid"]
    fresh = await call(h, "GET", "/v1/tenants/a/contacts/15550001111?refresh=true")
    assert fresh["lid"] == ann["lid"] and (await server_calls(h, "a"))["user_info"] == 1
    by_lid = await call(h, "GET", f"/v1/tenants/a/contacts/{ann['lid']}")
    assert by_lid["phone"] == ann["jid"] and by_lid["lid"] == ann["lid"]
    await call(h, "GET", "/v1/tenants/a/contacts/15559999999", status=404)
    await call(h, "GET", "/v1/tenants/a/contacts/nonsense", status=400)
    await call(h, "GET", "/v1/tenants/a/contacts?cursor=zzz", status=400)


async def test_address_book_is_read_into_the_contacts(h):
    await h.add("a")
    # saved on the phone while the daemon was away: no app-state event, only the device's copy
    await sim(h, "a", action="contacts", phones=["15550001111"], names={"15550001111": "Ann Lee"})
    await until(lambda: h.app.writer.depth == 0)
    con = sqlite3.connect(h.app.cfg.data_dir / "oxyd.sqlite3")
    con.execute("DELETE FROM contacts")
    con.commit()
    con.close()
    body = await call(h, "GET", "/v1/tenants/a/contacts")
    assert [(c["jid"], c["name"]) for c in body["contacts"]] == [
        ("15550001111@s.whatsapp.net", "Ann Lee")
    ]
    await call(h, "POST", "/v1/tenants/a/stop", status=202)
    assert (await call(h, "GET", "/v1/tenants/a/contacts"))["contacts"]  # the stored copy
    err = await call(h, "GET", "/v1/tenants/a/contacts?refresh=true", status=409)
    assert err["error"]["code"] == "not_connected"


async def test_profile_picture_cached_with_its_id(tmp_path, monkeypatch):
    h = await Harness.start(tmp_path, monkeypatch, OXYD_LOOKUP_CACHE_S="0.2")
    try:
        await h.add("a")
        await sim(h, "a", action="contacts", phones=["15550001111"])
        await sim(h, "a", action="contacts", phones=["15550002222"], pictures=False)
        r = await h.req("GET", "/v1/tenants/a/contacts/15550001111/picture")
        assert r.status == 200 and r.content_type == "image/png"
        png, etag = await r.read(), r.headers["ETag"]
        assert png.startswith(b"\x89PNG")
        r = await h.req("GET", "/v1/tenants/a/contacts/15550001111/picture")
        assert await r.read() == png
        assert (await server_calls(h, "a"))["picture"] == 1  # the second came from the cache
        r = await h.req(
            "GET", "/v1/tenants/a/contacts/15550001111/picture", headers={"If-None-Match": etag}
        )
        assert r.status == 304

        async def rechecked():
            r = await h.req("GET", "/v1/tenants/a/contacts/15550001111/picture")
            assert r.status == 200 and await r.read() == png
            return (await server_calls(h, "a"))["picture"] >= 2

        await until(rechecked, 5, "a re-check after cache_s")
        for _ in range(2):
            err = await call(h, "GET", "/v1/tenants/a/contacts/15550002222/picture", status=404)
            assert err["error"]["code"] == "picture_not_found"
    finally:
        await h.close()


async def test_groups_create_change_invite_join_leave(h):
    await h.add("a")
    await hook(h, "a")
    await sim(h, "a", action="contacts", phones=["15550001111", "15550002222", "15550003333"])
    g = await call(
        h,
        "POST",
        "/v1/tenants/a/groups",
        {"subject": "Team", "participants": ["15550001111", "15550009999"]},
        201,
    )
    jid = g["jid"]
    assert g["subject"] == "Team" and jid.endswith("@g.us")
    roles = {p["jid"]: p["role"] for p in g["participants"]}
    assert roles["15550001111@s.whatsapp.net"] == "member"
    assert "superadmin" in roles.values()
    assert g["results"] == [
        {"jid": "15550001111@s.whatsapp.net", "ok": True, "error": None, "code": None,
         "role": "member"},
        {"jid": "15550009999@s.whatsapp.net", "ok": False, "error": "not_found", "code": 404,
         "role": None},
    ]  # fmt: skip
    assert all(p["lid"] for p in g["participants"])
    listed = await call(h, "GET", "/v1/tenants/a/groups")
    assert [x["jid"] for x in listed["groups"]] == [jid]

    res = await call(
        h,
        "POST",
        f"/v1/tenants/a/groups/{jid}/participants",
        {"action": "add", "participants": ["15550002222", "15550001111"]},
    )
    assert [(x["ok"], x["error"]) for x in res["results"]] == [
        (True, None),
        (False, "already_participant"),
    ]
    res = await call(
        h,
        "POST",
        f"/v1/tenants/a/groups/{jid}/participants",
        {"action": "promote", "participants": ["15550002222"]},
    )
    assert res["results"][0]["ok"] and res["results"][0]["role"] == "admin"
    info = await call(h, "GET", f"/v1/tenants/a/groups/{jid}")
    roles = {p["jid"]: p["role"] for p in info["participants"]}
    assert roles["15550002222@s.whatsapp.net"] == "admin" and info["size"] == 3
    await call(
        h,
        "POST",
        f"/v1/tenants/a/groups/{jid}/participants",
        {"action": "remove", "participants": ["15550001111"]},
    )

    async def two_left():
        g = (await call(h, "GET", "/v1/tenants/a/groups"))["groups"][0]
        return g["size"] == 2

    await until(two_left, what="the removal in the cached list")
    changes = [(e["action"], e["participants"]) for e in outbox(h, "a", "group.participants")]
    assert changes == [
        ("add", ["15550002222@s.whatsapp.net"]),
        ("promote", ["15550002222@s.whatsapp.net"]),
        ("remove", ["15550001111@s.whatsapp.net"]),
    ]
    assert outbox(h, "a", "group.updated")[0]["change"] == "joined"

    link = (await call(h, "GET", f"/v1/tenants/a/groups/{jid}/invite"))["link"]
    assert link.startswith("https://chat.whatsapp.com/")
    assert (await call(h, "GET", f"/v1/tenants/a/groups/{jid}/invite"))["link"] == link
    new = (await call(h, "DELETE", f"/v1/tenants/a/groups/{jid}/invite"))["link"]
    assert new != link

    left = await call(h, "POST", f"/v1/tenants/a/groups/{jid}/leave")
    assert left == {"jid": jid, "left": True}
    assert (await call(h, "GET", "/v1/tenants/a/groups"))["groups"] == []
    err = await call(h, "POST", "/v1/tenants/a/groups/join", {"invite": link}, 404)
    assert err["error"]["code"] == "not_found"  # the old link was reset
    joined = await call(h, "POST", "/v1/tenants/a/groups/join", {"invite": new})
    assert joined["jid"] == jid
    assert [x["jid"] for x in (await call(h, "GET", "/v1/tenants/a/groups"))["groups"]] == [jid]
    # Not an admin any more (joined by link): WhatsApp refuses the whole request.
    err = await call(
        h,
        "POST",
        f"/v1/tenants/a/groups/{jid}/participants",
        {"action": "add", "participants": ["15550003333"]},
        403,
    )
    assert err["error"]["code"] == "not_allowed"


async def test_simulated_group_and_its_events(h):
    await h.add("a")
    await hook(h, "a")
    jid = "120363000000000001@g.us"
    await sim(h, "a", action="group", jid=jid, subject="Club", participants=["15550001111"])

    async def listed():
        return (await call(h, "GET", "/v1/tenants/a/groups"))["groups"]

    groups = await until(listed, what="group listed")
    assert groups[0]["subject"] == "Club" and groups[0]["size"] == 2
    await sim(
        h,
        "a",
        action="group",
        jid=jid,
        subject="Club 2",
        participants=["15550001111", "15550002222"],
    )

    async def renamed():
        g = await call(h, "GET", f"/v1/tenants/a/groups/{jid}")
        return g["subject"] == "Club 2" and g["size"] == 3

    await until(renamed)
    await until(lambda: outbox(h, "a", "group.participants"))
    updated = outbox(h, "a", "group.updated")
    assert [u["change"] for u in updated] == ["joined", "info"]
    assert updated[1]["changes"] == {"subject": "Club 2"}
    assert outbox(h, "a", "group.participants")[0]["participants"] == ["15550002222@s.whatsapp.net"]
    for bad in ("x@g.us", "123@s.whatsapp.net"):
        await call(h, "GET", f"/v1/tenants/a/groups/{bad}", status=400)
    await call(h, "GET", "/v1/tenants/a/groups/1203639@g.us", status=404)
    for body in (
        {"action": "kick", "participants": ["1555"]},
        {"action": "add", "participants": []},
        {"action": "add", "participants": ["not a number"]},
        {"action": "add"},
    ):
        await call(h, "POST", f"/v1/tenants/a/groups/{jid}/participants", body, 400)
    for body in ({"subject": ""}, {"subject": "x" * 101}, {"participants": []}):
        await call(h, "POST", "/v1/tenants/a/groups", body, 400)
    await call(h, "POST", "/v1/tenants/a/groups/join", {"invite": "http://evil/x"}, 400)


async def test_every_route_hides_other_tenants(h):
    await h.add("a")
    await h.add("b")
    token_b = await h.token("b")
    jid = "120363000000000001@g.us"
    routes = [
        ("POST", "/v1/tenants/a/lookup", {"phones": ["15550001111"]}),
        ("GET", "/v1/tenants/a/contacts", None),
        ("GET", "/v1/tenants/a/contacts/15550001111", None),
        ("GET", "/v1/tenants/a/contacts/15550001111/picture", None),
        ("GET", "/v1/tenants/a/groups", None),
        ("POST", "/v1/tenants/a/groups", {"subject": "x"}),
        ("POST", "/v1/tenants/a/groups/join", {"invite": "AbCdEfGhIjKlMn"}),
        ("GET", f"/v1/tenants/a/groups/{jid}", None),
        ("POST", f"/v1/tenants/a/groups/{jid}/participants", {"action": "add",
                                                              "participants": ["1555000111"]}),
        ("GET", f"/v1/tenants/a/groups/{jid}/invite", None),
        ("DELETE", f"/v1/tenants/a/groups/{jid}/invite", None),
        ("POST", f"/v1/tenants/a/groups/{jid}/leave", None),
        ("PATCH", "/v1/tenants/a", {"reject_calls": True}),
    ]  # fmt: skip
    for method, path, body in routes:
        err = await call(h, method, path, body, 404, token=token_b)
        assert err["error"]["code"] == "tenant_not_found", (method, path)
    assert (await server_calls(h, "a")) == {}


async def test_settings_patch_show_and_apply(h):
    t = await h.add("a")
    assert t["settings"] == {"reject_calls": False, "mark_online": False, "proxy": None}
    await hook(h, "a")
    t = await call(h, "PATCH", "/v1/tenants/a", {"reject_calls": True, "mark_online": True})
    assert t["settings"] == {"reject_calls": True, "mark_online": True, "proxy": None}
    assert (await sim(h, "a", action="server"))["presence"] == "available"
    call_ = await sim(h, "a", action="call", **{"from": "15550001111"})
    assert call_["rejected"] is True
    await until(lambda: outbox(h, "a", "call.rejected"))
    assert outbox(h, "a", "call.rejected")[0]["from"] == "15550001111@s.whatsapp.net"
    t = await call(h, "PATCH", "/v1/tenants/a", {"proxy": "socks5://u:secret@127.0.0.1:1080"})
    assert t["settings"]["proxy"] == "socks5://u:***@127.0.0.1:1080"
    assert "secret" not in json.dumps(await call(h, "GET", "/v1/tenants"))
    t = await call(h, "PATCH", "/v1/tenants/a", {"mark_online": False, "proxy": None})
    assert t["settings"] == {"reject_calls": True, "mark_online": False, "proxy": None}
    assert (await sim(h, "a", action="server"))["presence"] == "unavailable"
    assert (await sim(h, "a", action="call", **{"from": "15550001111"}))["rejected"] is True
    await call(h, "PATCH", "/v1/tenants/a", {"reject_calls": False})
    assert (await sim(h, "a", action="call", **{"from": "15550001111"}))["rejected"] is False
    # Bad settings: 400 naming the field; nothing changes.
    for body in (
        {"colour": "red"},
        {"reject_calls": "yes"},
        {"reject_calls": None},
        {"proxy": "ftp://h:1"},
        {"proxy": "socks5://nohost"},
        {"proxy": "http://h:99999"},
        {},
    ):
        await call(h, "PATCH", "/v1/tenants/a", body, 400)
    token = await h.token("a")
    await call(h, "PATCH", "/v1/tenants/a", {"mark_online": True}, token=token)
    err = await call(h, "PATCH", "/v1/tenants/a", {"proxy": "http://h:3128"}, 403, token=token)
    assert err["error"]["code"] == "forbidden"
    # POST /v1/tenants takes them too, and they survive a restart of the app.
    t = await call(
        h,
        "POST",
        "/v1/tenants",
        {"id": "b", "engine": "simulator", "reject_calls": True, "proxy": "http://h:3128"},
        201,
    )
    assert t["settings"] == {"reject_calls": True, "mark_online": False, "proxy": "http://h:3128"}
    await call(h, "POST", "/v1/tenants", {"id": "c", "mark_online": "no"}, 400)
    stored = await h.app.store.tenant("b")
    assert stored.settings == {"reject_calls": True, "proxy": "http://h:3128"}
