"""Command line: argv -> subcommands. `oxyd run` is the daemon; the rest are tools."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from oxyd import __version__
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
    for module in _plugins():
        module.register(sub)
    return p


def _plugins() -> list:
    """Subcommands that live with the module that implements them."""
    mods = []
    for name in ("oxyd.cli.client", "oxyd.cli.backup"):
        try:
            mods.append(__import__(name, fromlist=["register"]))
        except ImportError:
            continue
    return [m for m in mods if hasattr(m, "register")]


def _run(args: argparse.Namespace, cfg) -> int:
    from oxyd import daemon, log

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
    json.dump(cfg.as_dict(mask=True), sys.stdout, indent=2)
    sys.stdout.write("\nconfig OK\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"oxyd: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return args.handler(args, cfg)


if __name__ == "__main__":
    sys.exit(main())
