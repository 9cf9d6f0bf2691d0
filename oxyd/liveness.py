"""Silent zombies: a session whose heartbeat passes while its events have stopped.

The neonize hazard behind it: when event marshalling fails, the Go client stays logged in and
answers its liveness call, but nothing reaches Python any more. Silence alone proves nothing (a
quiet tenant is silent for hours), so silence counts only on a tenant that normally gets
traffic: events kept coming, with no gap as long as `zombie_after_s`, for BUSY_WINDOWS times
`zombie_after_s` before the silence began. A rebuild starts a new run (its first event follows
the silence), so a tenant that simply went quiet is rebuilt at most once, never in a loop.
"""

from __future__ import annotations

BUSY_WINDOWS = 3


class Traffic:
    """The current run of events without a long gap, on the monotonic clock."""

    __slots__ = ("gap_s", "last_mono", "run_start_mono")

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self.run_start_mono = 0.0
        self.last_mono = 0.0

    def note(self, now_mono: float) -> None:
        """Called for every event (on the sink's hot path: two comparisons)."""
        if now_mono - self.last_mono >= self.gap_s:
            self.run_start_mono = now_mono
        self.last_mono = now_mono

    def silent_s(self, now_mono: float) -> float | None:
        """Seconds of silence when this tenant normally gets traffic and has had none for
        `gap_s`; else None."""
        silent_s = now_mono - self.last_mono
        busy_s = self.last_mono - self.run_start_mono
        if silent_s >= self.gap_s and busy_s >= BUSY_WINDOWS * self.gap_s:
            return silent_s
        return None
