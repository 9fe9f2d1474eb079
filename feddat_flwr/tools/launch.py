"""Run the app as a Flower simulation on a private SuperLink, and wait for the outcome.

`flwr run .` alone starts a shared SuperLink that outlives the run and reports success even when
the run failed. This launcher gives each run its own SuperLink (private FLWR_HOME, free port),
streams the run's log, judges the run by its final status and stops everything it started.

    python -m feddat_flwr.tools.launch --clients 5 --output-dir outputs/my-run -c num-rounds=3
    python -m feddat_flwr.tools.launch --clients 5 -c num-rounds=3 -c resume-from=$PWD/outputs/my-run
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feddat_flwr.tools.cli import add_overrides, unwind_on_sigterm
from feddat_flwr.tools.superlink import (
    APP_DIR,
    CONNECTION,
    RunFailed,
    free_port,
    stop_process,
    submit_run,
    tool_env,
    wait_for_port,
    wait_for_run,
    write_flwr_home,
)


@dataclass
class Outcome:
    run_id: int
    status: str
    seconds: float


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
    """Run the app once on a private simulation SuperLink; raise RunFailed unless it completed.
    The simulated clients mirror their private state under <work_dir>/client-state unless the run
    config names a `client-state-dir` (so that the run can be resumed with `resume-from`)."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="feddat-flwr-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run_config = {"client-state-dir": str(work / "client-state"), **run_config}
    port = free_port()
    env = tool_env(work / "flwr-home")
    write_flwr_home(work / "flwr-home", f"127.0.0.1:{port}")
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
            wait_for_port(port, superlink, 60, log_path)
            run_id = submit_run(app_dir, run_config, work / "run-config.toml", env,
                                "--federation-config", federation)
            if stream:
                streamer = subprocess.Popen(
                    [str(Path(sys.executable).with_name("flwr")), "log", str(run_id), CONNECTION, "--stream"],
                    env=env, start_new_session=True,
                )
            output_dir = run_config.get("output-dir")
            status = wait_for_run(run_id, env, start + timeout, Path(output_dir) if output_dir else None, superlink)
        finally:
            stop_process(streamer, grace=2)
            stop_process(superlink)
    seconds = time.monotonic() - start
    if status != "finished:completed":
        raise RunFailed(f"run {run_id} ended as {status!r}; SuperLink log: {log_path}")
    if work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return Outcome(run_id, status, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5, help="number of simulated clients (SuperNodes)")
    parser.add_argument("--cpus", type=float, default=1, help="CPUs per client actor")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per client actor, e.g. 0.2")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="run directory (default: -c output-dir=..., else outputs/<timestamp>)")
    add_overrides(parser)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    overrides = dict(args.config)
    # A resumed run goes on in the interrupted run's directory (and its work directory, with the
    # clients' mirrored state).
    out = args.output_dir or Path(overrides.get("resume-from") or overrides.get("output-dir")
                                  or Path("outputs") / time.strftime("%Y%m%d-%H%M%S"))
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
