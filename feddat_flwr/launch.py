"""Run the app as a Flower simulation on a private SuperLink, and wait for the outcome.

`flwr run .` alone starts a shared SuperLink that outlives the run and reports success even when
the run failed. This launcher gives each run its own SuperLink (private FLWR_HOME, free port),
streams the run's log, judges the run by its final status and stops everything it started.

    python -m feddat_flwr.launch --clients 5 --output-dir outputs/my-run -c num-rounds=3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import tomli_w

APP_DIR = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_IMPORT_WARNING": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
CONNECTION = "feddat-local"
ASK_INTERVAL = 30.0  # seconds between asking the SuperLink for a run's status (see wait_for_run)


class RunFailed(RuntimeError):
    pass


@dataclass
class Outcome:
    run_id: int
    status: str
    seconds: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunFailed(f"SuperLink exited with {proc.returncode}; log: {log_path}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RunFailed(f"SuperLink did not open port {port} within {timeout:.0f} s; log: {log_path}")


def stop_process(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """Terminate `proc` and every process it started (Flower detaches some: SuperExec, Ray),
    then kill what is still alive after `grace` seconds."""
    if proc is None:
        return
    try:
        tree = [psutil.Process(proc.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in reversed(tree):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    proc.poll()


def _flwr(*args: str, env: Mapping[str, str], **kwargs) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("flwr"))
    return subprocess.run([exe, *args], env=env, text=True, capture_output=True, **kwargs)


def _json_of(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RunFailed(f"unexpected flwr output (exit {proc.returncode}): {proc.stdout}{proc.stderr}") from exc


def unwind_on_sigterm() -> None:
    """On SIGTERM, unwind normally (finally blocks run) so that a running simulation's SuperLink
    and everything it started are stopped, not left behind in their own sessions."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def run_simulation(
    run_config: Mapping[str, Any],
    *,
    num_clients: int = 5,
    cpus_per_client: float = 1,
    gpus_per_client: float = 0.0,
    app_dir: Path = APP_DIR,
    work_dir: Path | None = None,
    timeout: float = 3600,
    stream: bool = True,
) -> Outcome:
    """Run the app once on a private simulation SuperLink; raise RunFailed unless it completed."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="feddat-flwr-"))
    home = work / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        tomli_w.dumps({"superlink": {"default": CONNECTION,
                                     CONNECTION: {"address": f"127.0.0.1:{port}", "insecure": True}}})
    )
    overrides = work / "run-config.toml"
    overrides.write_text(tomli_w.dumps(dict(run_config)))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(home),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    federation = (f"num-supernodes={num_clients} client-resources-num-cpus={cpus_per_client} "
                  f"client-resources-num-gpus={gpus_per_client}")
    log_path = work / "superlink.log"
    superlink = streamer = None
    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            superlink = subprocess.Popen(
                [str(Path(sys.executable).with_name("flower-superlink")), "--insecure", "--simulation",
                 "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"],
                env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            _wait_for_port(port, superlink, 60, log_path)
            submitted = _flwr("run", str(app_dir), CONNECTION, "--run-config", str(overrides),
                              "--federation-config", federation, "--format", "json", env=env)
            reply = _json_of(submitted)
            if not reply.get("success", False) or "run-id" not in reply:
                raise RunFailed(f"flwr run refused the run: {reply}")
            run_id = int(reply["run-id"])
            if stream:
                streamer = subprocess.Popen(
                    [str(Path(sys.executable).with_name("flwr")), "log", str(run_id), CONNECTION, "--stream"],
                    env=env, start_new_session=True,
                )
            output_dir = run_config.get("output-dir")
            status = wait_for_run(run_id, env, start + timeout, Path(output_dir) if output_dir else None)
        finally:
            stop_process(streamer, grace=2)
            stop_process(superlink)
    seconds = time.monotonic() - start
    if status != "finished:completed":
        raise RunFailed(f"run {run_id} ended as {status!r}; SuperLink log: {log_path}")
    if work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return Outcome(run_id, status, seconds)


def wait_for_run(run_id: int, env: Mapping[str, str], deadline: float, run_dir: Path | None) -> str:
    """The run's final status. Asking the SuperLink costs a `flwr` CLI process (about 2 CPU-seconds,
    which on a small machine is taken from the clients), so it is asked every ASK_INTERVAL seconds,
    and every second once the run's results.json holds its last round (the run is ending)."""
    next_ask = time.monotonic()
    while time.monotonic() < deadline:
        ending = run_dir is not None and completed_results(run_dir) is not None
        if ending or time.monotonic() >= next_ask:
            listing = _json_of(_flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json", env=env))
            runs = listing.get("runs", [])
            status = runs[0].get("status", "") if runs else ""
            if status.startswith("finished"):
                return status
            next_ask = time.monotonic() + ASK_INTERVAL
        time.sleep(1)
    return "timeout"


def completed_results(run_dir: Path) -> dict | None:
    """The results of the run in `run_dir` if it evaluated its last round, else None."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    rounds = results.get("rounds") or []
    if results.get("final") and rounds and rounds[-1]["round"] == results["config"]["num-rounds"]:
        return results
    return None


def parse_override(text: str) -> tuple[str, Any]:
    """key=value with a TOML value (strings may be bare)."""
    import tomllib

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5, help="number of simulated clients (SuperNodes)")
    parser.add_argument("--cpus", type=float, default=1, help="CPUs per client actor")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per client actor, e.g. 0.2")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="run directory (default: outputs/<timestamp>)")
    parser.add_argument("-c", "--config", type=parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help="run-config override, repeatable")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    overrides = dict(args.config)
    out = args.output_dir or Path("outputs") / time.strftime("%Y%m%d-%H%M%S")
    overrides["output-dir"] = str(out.resolve())
    try:
        outcome = run_simulation(overrides, num_clients=args.clients, cpus_per_client=args.cpus,
                                 gpus_per_client=args.gpus, timeout=args.timeout,
                                 work_dir=out.resolve().with_name(out.name + ".flwr"))
    except RunFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"run {outcome.run_id} completed in {outcome.seconds:.0f} s; results in {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
