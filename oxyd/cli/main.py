"""Command line: argv -> subcommands. `oxyd run` is the daemon; the rest are tools."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from oxyd import __version__, log
from oxyd.cli import backup, client
from oxyd.config import EXIT_CONFIG, ConfigError, load


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oxyd", description="Many WhatsApp sessions, one daemon.")
    p.add_argument("--version", action="version", version=f"oxyd {__version__}")
    p.add_argument("--config", "-c", help="YAML config file (default: $OXYD_CONFIG, else none)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser("run", help="run the daemon")
    run.set_defaults(handler=_run)
    check = sub.add_parser("check-config", help="validate and print the effective config")
    check.set_defaults(handler=_check_config)
    # Subcommands that live with the module that implements them.
    client.register(sub)
    backup.register(sub)
    return p


def _run(args: argparse.Namespace, cfg) -> int:
    from oxyd import daemon

    log.setup(cfg.log.level, cfg.log.format)
    try:
        return asyncio.run(daemon.run(cfg))
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        from loguru import logger

        logger.error("cannot start: {}", e)
        return 1


def _check_config(args: argparse.Namespace, cfg) -> int:
    from oxyd import preflight

    found = preflight.problems(cfg)  # what `oxyd run` checks before it starts
    if found:
        _config_errors(found)
        return EXIT_CONFIG
    json.dump(cfg.as_dict(mask=True), sys.stdout, indent=2)
    sys.stdout.write("\nconfig OK\n")
    return 0


def _config_errors(errors: list[str]) -> None:
    for error in errors:
        print(f"oxyd: config error: {error}", file=sys.stderr)


# Options of the whole program that people also type after the subcommand (or, for the
# client's --url/--token, before it): moved to where argparse expects them.
_FRONT_OPTIONS = ("--config", "-c")
_CLIENT_OPTIONS = ("--url", "--token")


def arrange(argv: Sequence[str]) -> list[str]:
    """`--config` anywhere goes first; `--url`/`--token` given before the subcommand go last
    (the client subcommands define them). Values stay with their option."""
    front: list[str] = []
    middle: list[str] = []
    end: list[str] = []
    command_seen = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            middle += argv[i:]
            break
        name = arg.partition("=")[0]
        if name in _FRONT_OPTIONS or name in _CLIENT_OPTIONS:
            taken = list(argv[i : i + (1 if "=" in arg else 2)])
            i += len(taken)
            if name in _FRONT_OPTIONS:
                front += taken
            else:
                (middle if command_seen else end).extend(taken)
            continue
        command_seen = command_seen or not arg.startswith("-")
        middle.append(arg)
        i += 1
    return front + middle + end


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        # Output to a pipe is buffered: flush here, where a reader that went away is caught,
        # not at the interpreter's exit (which would print a traceback and exit 120).
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`oxyd tenant list | head -1`): nothing left to say. Point
        # stdout at /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(arrange(argv))
    try:
        cfg = load(args.config)
    except ConfigError as e:
        _config_errors(e.errors)
        return EXIT_CONFIG
    if getattr(args, "daemon_logging", False):
        log.setup(cfg.log.level, cfg.log.format)
    return args.handler(args, cfg)


if __name__ == "__main__":
    sys.exit(main())
