"""Loading the neonize library: its import, once and quietly, and its log levels. A leaf the
engine, its clients and the pairing child share; neonize itself is imported only when called
(it takes a while, and the daemon without neonize tenants never needs it)."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import time
import warnings


def import_neonize() -> None:
    """Import neonize once, quietly: its import leaks an `os.popen("uname -a")` pipe whose
    ResourceWarning would otherwise surface at a random later GC (an error under pytest)."""
    if "neonize.aioze.client" in sys.modules:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        import neonize.aioze.client  # noqa: F401

        # The unwaited popen sits in subprocess' cleanup list until the next Popen: reap it
        # now, under this filter, instead of inside whoever spawns the next process.
        for _ in range(100):
            getattr(subprocess, "_cleanup", lambda: None)()
            if not getattr(subprocess, "_active", None):
                break
            time.sleep(0.01)
        gc.collect()


def quiet_neonize_logs() -> None:
    """neonize forwards Go log lines at the level of its logger: keep them at WARNING."""
    for name in (
        "neonize",
        "neonize.utils.log",
        "whatsmeow",
        "Whatsmeow",
        "whatsmeow.Client",
        "Whatsmeow.Database",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # We never use neonize's ffmpeg paths; its "ffmpeg missing" warning would mislead.
    logging.getLogger("neonize.utils.ffmpeg").setLevel(logging.ERROR)
