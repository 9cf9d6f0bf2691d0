import sqlite3
import stat

import pytest

from oxyd.model import State, Tenant
from oxyd.store import schema
from oxyd.store.db import SchemaTooNew, Store, hash_token


async def test_fresh_database_jumps_to_latest_and_reopen_is_a_noop(tmp_path):
    s = await Store.open(tmp_path)
    await s.add_tenant(Tenant(id="a", engine="simulator", state_since_ms=1, created_at_ms=1))
    await s.close()
    assert stat.S_IMODE((tmp_path / "oxyd.sqlite3").stat().st_mode) == 0o600
    con = sqlite3.connect(tmp_path / "oxyd.sqlite3")
    assert con.execute("PRAGMA user_version").fetchone()[0] == schema.LATEST
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    s = await Store.open(tmp_path)
    assert [t.id for t in await s.tenants()] == ["a"]
    await s.close()


async def test_database_newer_than_the_code_is_refused(tmp_path):
    s = await Store.open(tmp_path)
    await s.close()
    con = sqlite3.connect(tmp_path / "oxyd.sqlite3")
    con.execute(f"PRAGMA user_version={schema.LATEST + 1}")
    con.commit()
    con.close()
    with pytest.raises(SchemaTooNew, match="upgrade oxyd"):
        await Store.open(tmp_path)


async def test_state_history_tokens_and_removal(tmp_path):
    s = await Store.open(tmp_path)
    t = Tenant(id="a", engine="simulator", state_since_ms=1, created_at_ms=1)
    assert await s.add_tenant(t)
    assert not await s.add_tenant(t)
    t.state, t.last_error, t.state_since_ms = State.LOGGED_OUT, "unlinked", 5
    await s.save_state(t)
    got = await s.tenant("a")
    assert (got.state, got.last_error, got.state_since_ms) == (State.LOGGED_OUT, "unlinked", 5)
    assert [h["state"] for h in await s.state_history("a")] == ["logged_out", "new"]
    await s.add_token("a", "tok-123", 1)
    assert await s.token_tenant("tok-123") == "a"
    assert await s.token_tenant("tok-124") is None
    async with s.ro.execute("SELECT hash FROM tokens") as cur:
        assert (await cur.fetchone())[0] == hash_token("tok-123")  # never the token itself
    assert await s.revoke_tokens("a") == 1
    assert await s.token_tenant("tok-123") is None
    await s.remove_tenant("a", purge=True)
    assert await s.tenant("a") is None
    await s.close()


async def test_malformed_cursors_are_value_errors(tmp_path):
    s = await Store.open(tmp_path)
    for bad in ("x", "!!!", "WzFd", "eyJhIjoxfQ"):
        with pytest.raises(ValueError):
            await s.messages("a", None, 10, bad)
        with pytest.raises(ValueError):
            await s.chats("a", 10, bad)
    await s.close()
