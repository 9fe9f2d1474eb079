"""What every tool that drives Flower from outside needs: the offline environment, the `flwr`
CLI's home and connection, a SuperLink's port, run submission and status, process-tree stops.

Used by the simulation launcher (launch.py) and the loopback deployment driver of the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import tomli_w

from feddat_flwr.records import completed_results

APP_DIR = Path(__file__).resolve().parents[2]
OFFLINE_ENV_FILE = APP_DIR / "deploy" / "offline.env"
CONNECTION = "feddat-local"  # the name of the connection in the CLI's config.toml
ASK_INTERVAL = 30.0  # seconds between asking the SuperLink for a run's status (see wait_for_run)
APP_PROCESSES = ("flwr-simulation", "flwr-serverapp")  # a run's app process under a SuperLink


class RunFailed(RuntimeError):
    pass


def offline_env(path: Path = OFFLINE_ENV_FILE) -> dict[str, str]:
    """deploy/offline.env as a mapping (the one list of the offline, quiet environment)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def tool_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    """This process's environment with the offline settings, this Python's bin/ first on PATH,
    and FLWR_HOME for the `flwr` CLI."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, **offline_env(), "FLWR_HOME": str(flwr_home),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def write_flwr_home(home: Path, address: str, *, root_certificates: Path | None = None) -> None:
    """The CLI's config.toml with one default connection to `address` (TLS with the given CA, else
    insecure)."""
    connection: dict[str, Any] = {"address": address}
    if root_certificates is not None:
        connection["root-certificates"] = str(root_certificates)
    else:
        connection["insecure"] = True
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    """Wait until `proc` (a SuperLink) accepts connections on `port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunFailed(f"SuperLink exited with {proc.returncode}; log: {log_path}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RunFailed(f"SuperLink did not open port {port} within {timeout:.0f} s; log: {log_path}")


def process_tree(proc: subprocess.Popen | None) -> list[psutil.Process]:
    """`proc` and every process it started (Flower detaches some: SuperExec, Ray); [] if gone."""
    if proc is None:
        return []
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_process(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """Terminate `proc` and every process it started, then kill what is still alive after `grace`
    seconds (grace 0: kill at once, as a crash would)."""
    tree = process_tree(proc)
    if grace > 0:
        for p in reversed(tree):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    if proc is not None:
        proc.poll()


def flwr_cli(*args: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Run `flwr ARGS --format json` and return its JSON reply."""
    exe = str(Path(sys.executable).with_name("flwr"))
    proc = subprocess.run([exe, *args, "--format", "json"], env=env, text=True, capture_output=True)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RunFailed(f"unexpected flwr output (exit {proc.returncode}): {proc.stdout}{proc.stderr}") from exc


def submit_run(app_dir: Path, run_config: Mapping[str, Any], config_file: Path, env: Mapping[str, str],
               *extra: str) -> int:
    """`flwr run` the app with `run_config` (written to `config_file`); the run id."""
    config_file.write_text(tomli_w.dumps(dict(run_config)))
    reply = flwr_cli("run", str(app_dir), CONNECTION, "--run-config", str(config_file), *extra, env=env)
    if not reply.get("success", False) or "run-id" not in reply:
        raise RunFailed(f"flwr run refused the run: {reply}")
    return int(reply["run-id"])


def app_running(superlink: subprocess.Popen | None) -> bool:
    """Whether a ServerApp or simulation process runs under `superlink` (read from /proc: no CLI)."""
    for child in process_tree(superlink)[1:]:
        with contextlib.suppress(psutil.Error):
            if any(name in part for part in child.cmdline()[:2] for name in APP_PROCESSES):
                return True
    return False


def wait_for_run(run_id: int, env: Mapping[str, str], deadline: float, run_dir: Path | None,
                 superlink: subprocess.Popen | None = None) -> str:
    """The run's final status. Asking the SuperLink costs a `flwr` CLI process (about 2 CPU-seconds,
    which on a small machine is taken from the clients), so it is not asked while the run's app
    process runs under `superlink` (when given); it is asked every second once the app process
    has ended or the run's results.json holds its last round (the run is ending), and otherwise
    every ASK_INTERVAL seconds."""
    next_ask = time.monotonic()
    seen_app = False
    while time.monotonic() < deadline:
        running = app_running(superlink)
        seen_app = seen_app or running
        ending = run_dir is not None and completed_results(run_dir) is not None
        if ending or (not running and (seen_app or time.monotonic() >= next_ask)):
            runs = flwr_cli("ls", CONNECTION, "--run-id", str(run_id), env=env).get("runs", [])
            status = runs[0].get("status", "") if runs else ""
            if status.startswith("finished"):
                return status
            next_ask = time.monotonic() + ASK_INTERVAL
        time.sleep(1)
    return "timeout"
