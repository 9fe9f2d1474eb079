"""Command-line pieces shared by the tools: `-c key=value` overrides and stopping on SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import tomllib
from typing import Any


def parse_override(text: str) -> tuple[str, Any]:
    """key=value with a TOML value (strings may be bare)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def add_overrides(parser: argparse.ArgumentParser, help_text: str = "run-config override, repeatable") -> None:
    parser.add_argument("-c", "--config", type=parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help=help_text)


def unwind_on_sigterm() -> None:
    """On SIGTERM, unwind normally (finally blocks run) so that a running simulation's SuperLink
    and everything it started are stopped, not left behind in their own sessions."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
