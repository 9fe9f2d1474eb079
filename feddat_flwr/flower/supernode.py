"""feddat-flwr's SuperNode: Flower's `flower-supernode` with a lean path for each message.

    feddat-supernode [flower-supernode flags...]      (deploy/start-supernode.sh runs it)

Environment (defaults in brackets):
  FEDDAT_EXECUTOR   warm: the SuperNode runs with `--isolation process` and this process starts
                    feddat_flwr.flower.executor beside it (restarted if it dies), one long-lived
                    process that serves every message; stock: Flower's own executor, a fresh
                    `flwr-clientapp` process per message [warm]
  FEDDAT_NODE_POLL  seconds: cap on the SuperNode's idle waits, which Flower hard-codes (3 s
                    between asks for a message, 0.5 s while waiting for the ClientApp's reply);
                    0 keeps Flower's [0.2]

Both lean on Flower internals (flwr 1.41-1.42, pinned); docs/deployment.md says what each saves.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from logging import INFO, WARNING
from types import SimpleNamespace

from flwr.supercore import log
from flwr.supercore.constant import SUPERNODE_UVICORN_DEFAULT_PORT, UVICORN_DEFAULT_HOST
from flwr.supernode import start_client_internal
from flwr.supernode.cli.flower_supernode import flower_supernode

EXECUTORS = ("warm", "stock")
DEFAULT_NODE_POLL = 0.2


def settings(env=os.environ) -> tuple[str, float]:
    """(executor, poll cap) from the environment, with a clear error for a bad value."""
    executor = env.get("FEDDAT_EXECUTOR", "warm")
    if executor not in EXECUTORS:
        raise SystemExit(f"FEDDAT_EXECUTOR={executor!r}: use one of {', '.join(EXECUTORS)}")
    raw = env.get("FEDDAT_NODE_POLL", str(DEFAULT_NODE_POLL))
    try:
        poll = float(raw)
    except ValueError:
        poll = -1.0
    if not 0 <= poll <= 3:
        raise SystemExit(f"FEDDAT_NODE_POLL={raw!r}: use seconds between 0 (Flower's own waits) and 3")
    return executor, poll


def cap_node_polls(cap: float) -> None:
    """Make the SuperNode loop's sleeps at most `cap` seconds (its module's `time`, nothing else)."""
    if start_client_internal.time is not time:
        raise RuntimeError("flwr's SuperNode loop no longer uses the `time` module: FEDDAT_NODE_POLL supports "
                           "flwr 1.41-1.42; set FEDDAT_NODE_POLL=0")
    capped = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    start_client_internal.time = SimpleNamespace(**{**capped, "sleep": lambda s: time.sleep(min(s, cap))})


def executor_command(flags: list[str]) -> list[str]:
    """The executor's command line for a SuperNode started with `flags`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default=UVICORN_DEFAULT_HOST)
    parser.add_argument("--port", default=SUPERNODE_UVICORN_DEFAULT_PORT)
    parser.add_argument("--ssl-ca-certfile", default=None)
    parser.add_argument("--superexec-auth-secret-file", default=None)
    parser.add_argument("--isolation", default=None)
    known, _ = parser.parse_known_args(flags)
    if known.isolation is not None:
        raise SystemExit("FEDDAT_EXECUTOR=warm sets --isolation itself; drop the flag or set FEDDAT_EXECUTOR=stock")
    host = "127.0.0.1" if known.host in ("0.0.0.0", "::") else known.host
    host = f"[{host}]" if ":" in host else host
    command = [sys.executable, "-m", "feddat_flwr.flower.executor", "--runtime-api-address", f"{host}:{known.port}",
               "--parent-pid", str(os.getpid())]
    if known.ssl_ca_certfile:
        command += ["--root-certificates", known.ssl_ca_certfile]
    if known.superexec_auth_secret_file:
        command += ["--superexec-auth-secret-file", known.superexec_auth_secret_file]
    return command


def _supervise(command: list[str]) -> None:
    """Keep the executor running (it also restarts itself for new app code)."""
    while True:
        code = subprocess.Popen(command).wait()
        log(WARNING, "[feddat] ClientApp executor exited with %s; restarting it", code)
        time.sleep(1)


def main() -> None:
    executor, poll = settings()
    flags = sys.argv[1:]
    if poll > 0:
        cap_node_polls(poll)
    if executor == "warm":
        threading.Thread(target=_supervise, args=(executor_command(flags),), daemon=True,
                         name="feddat-executor").start()
        flags = [*flags, "--isolation", "process"]
    log(INFO, "[feddat] SuperNode with the %s ClientApp executor, idle polls %s", executor,
        f"<= {poll} s" if poll > 0 else "as in Flower")
    sys.argv = ["flower-supernode", *flags]
    flower_supernode()


if __name__ == "__main__":
    main()
