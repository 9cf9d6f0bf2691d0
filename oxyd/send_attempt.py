"""One attempt to send a queued message, and what an attempt whose outcome is unknown means.

Exactly once needs the engine to send with the id chosen at queue time (design §12): then a
resend after a timeout, a crash or a dead engine host is one message for the recipient. The
simulator does; neonize 0.5.2 cannot (its SendMessage export lets whatsmeow choose the id), so
there every attempt is a new message, and for such an engine (`reuses_message_ids` False):

- an attempt is never abandoned: no timeout on our side while the call runs (the gate keeps
  the Go call until it ends and whatsmeow bounds its own wait for the server's ack); its real
  outcome is taken;
- before the call, the row records durably that an attempt is in flight (`started_at_ms`);
  every outcome clears it. A row that still has it when the drain reaches it again (after a
  restart, once the tenant is connected) was in flight when the process (or its engine host)
  ended, or when its drain was cancelled: it may have been sent;
- such a row, and an attempt that ends with SendUnknown, is never resent: it fails with
  `outcome_unknown: ...` (and its message.status webhook), unless the operator chose
  at-least-once with `send.resend_unknown`.

So the recipient never gets a silent duplicate; the price is a rare, explicit unknown.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from loguru import logger

from oxyd import backoff
from oxyd.engine import EngineError, NotConnected, SendRejected, SendUnknown
from oxyd.model import State
from oxyd.outgoing import Outgoing, as_message
from oxyd.store import sendqueue
from oxyd.store.sendqueue import FAILED, SENT, Row

if TYPE_CHECKING:
    from oxyd.sender import Sender
    from oxyd.supervision.runner import Runner

UNKNOWN = "outcome_unknown"
_NOT_RESENT = (
    "it was not resent, so that the recipient never gets it twice (the engine cannot reuse"
    " message ids; send.resend_unknown: true resends such messages instead)"
)


async def send_one(s: Sender, r: Runner, row: Row, data: bytes | None) -> bool:
    """Send one queued message; False when the drain must re-check the connection."""
    tid, clock = r.t.id, s.sup.clock
    if (tid, row.id) in s._cancelled:
        s._cancelled.discard((tid, row.id))
        return True
    reuses = r.client.reuses_message_ids
    if row.started_at_ms is not None and not await abandoned(s, tid, row, reuses):
        return True  # it failed as outcome_unknown
    while (wait_s := r.bucket.take()) > 0:
        # Pacing with jitter: never a burst above send.burst, never an exact rhythm.
        await clock.sleep(wait_s * (1.0 + 0.2 * s.sup.rng.random()))
    if not s.running or r.t.state is not State.CONNECTED or (tid, row.id) in s._cancelled:
        return False
    out = Outgoing(row.id, row.chat, row.kind, row.body, data)
    s.in_flight[tid] = row.id
    try:
        if reuses:
            res = await s.sup.bounded(r.client.send(out), s.cfg.timeout_s)
        else:
            if not await sendqueue.mark_started(s.tx, tid, row.id, clock.now_ms()):
                return True  # no longer queued: cancelled meanwhile
            # Awaited to its end, never timed out: a new attempt would be a second message.
            res = await r.client.send(out)
    except NotConnected as e:
        if not reuses:
            await sendqueue.clear_started(s.tx, tid, row.id)
        r.log.info("send {} waits: {}", row.id, e or "not connected")
        await clock.sleep(1.0)  # the engine knows before the state does
        return False
    except SendRejected as e:
        await s._finish(tid, row, FAILED, error=str(e))
        return True
    except asyncio.CancelledError:
        raise  # in flight at a stop: the row keeps its mark, the next start judges it
    except Exception as e:
        reason = "timed out" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
        # An EngineError says nothing was sent (transient: back off, retry). SendUnknown, or
        # an error no engine should raise (a bug: it may come after the message left), is
        # an unknown outcome: resent only where that is safe or chosen.
        known = isinstance(e, EngineError) and not isinstance(e, SendUnknown)
        if known or reuses:
            return await _retry(s, r, row, reason)
        if s.cfg.resend_unknown:
            return await _retry(s, r, row, f"outcome unknown: {reason}")
        error = e if isinstance(e, SendUnknown) else reason
        await s._finish(tid, row, FAILED, error=f"{UNKNOWN}: {error}; {_NOT_RESENT}")
        return True
    finally:
        s.in_flight.pop(tid, None)
    await s._finish(tid, row, SENT, result=res)
    msg = as_message(out, res, s._own(tid))
    if data and s.keep_media is not None:  # a copy of the media sent (oxyd/media/kept.py)
        msg = await s.keep_media(tid, msg, data)
    await s.sup.writer.put(tid, msg, sent=True)
    return True


async def _retry(s: Sender, r: Runner, row: Row, reason: str) -> bool:
    tid = r.t.id
    n = await sendqueue.count_attempt(s.tx, tid, row.id, reason)
    if n >= s.cfg.max_attempts:
        await s._finish(tid, row, FAILED, error=f"send_failed: {reason}")
        return True
    delay_s = backoff.delay_s(n - 1, 1.0, 60.0, s.sup.rng)
    r.log.warning("send {} failed ({}); retry {} in {:.1f}s", row.id, reason, n, delay_s)
    await s.sup.clock.sleep(delay_s)
    return False


async def abandoned(s: Sender, tid: str, row: Row, reuses: bool) -> bool:
    """A row whose attempt was in flight when the process (or its engine host) ended, or
    when its drain was cancelled: True when it is to be sent again (same id, or the operator
    chose at-least-once), False when it failed as outcome_unknown."""
    if reuses or s.cfg.resend_unknown:
        logger.bind(tenant=tid).warning("send {} was in flight: sending it again", row.id)
        await sendqueue.clear_started(s.tx, tid, row.id)
        return True
    why = "a send attempt was in flight when the daemon, its engine host or its drain ended"
    await s._finish(tid, row, FAILED, error=f"{UNKNOWN}: {why}; {_NOT_RESENT}")
    return False
