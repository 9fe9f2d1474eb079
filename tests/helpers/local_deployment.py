"""A real Flower deployment on loopback, started with the same deploy/*.sh scripts as containers.

One SuperLink (TLS and SuperNode authentication by default) and `num_nodes` SuperNodes, each a
separate process with its own data partition, state directory, Runtime API port and FLWR_HOME;
everything binds to 127.0.0.1 on free ports and is stopped by PID (whole process trees).

    with LocalDeployment(Path("/tmp/dep"), num_nodes=3) as dep:
        run_id, status = dep.run({"num-rounds": 2, "output-dir": "/tmp/dep/run"}, timeout=600)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from feddat_flwr.tools import superlink
from feddat_flwr.tools.superlink import APP_DIR, CONNECTION, RunFailed, free_port, stop_process

DEPLOY_DIR = APP_DIR / "deploy"


def stop_group(proc: subprocess.Popen | None) -> None:
    """Stop a process started with start_new_session=True, its process tree, then whatever is left
    of its process group (a SuperNode's SuperExec outlives a SuperNode that exited on its own)."""
    stop_process(proc)
    if proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


class LocalDeployment:
    """SuperLink + SuperNodes as separate processes on 127.0.0.1 (see the module docstring)."""

    def __init__(self, work_dir: Path, num_nodes: int, *, tls: bool = True, auth: bool = True,
                 app_dir: Path = APP_DIR, data_paths: list[Path] | None = None,
                 node_env: Mapping[str, str] | None = None):
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS")
        self.work_dir = Path(work_dir).resolve()
        self.num_nodes = num_nodes
        self.tls, self.auth, self.app_dir = tls, auth, app_dir
        self.data_paths = data_paths  # node i's own dataset (node-config data-path); None: easy-VQA partitions
        self.node_env = dict(node_env or {})  # extra environment of every SuperNode (e.g. FEDDAT_EXECUTOR)
        self.certs = self.work_dir / "certs"
        self.port = free_port()
        self.node_ports = [free_port() for _ in range(num_nodes)]
        self.env = superlink.tool_env(self.work_dir / "cli-home", PYTHONUNBUFFERED="1", CERTS_DIR=str(self.certs),
                            INSECURE=str(int(not tls)), NODE_AUTH=str(int(auth)))
        self.superlink: subprocess.Popen | None = None
        self.nodes: dict[int, subprocess.Popen] = {}

    # -- processes --------------------------------------------------------------------------
    def _spawn(self, name: str, script: str, env: Mapping[str, str]) -> subprocess.Popen:
        """Start deploy/<script> in work_dir/<name>/ with its own FLWR_HOME, logging to <name>.log."""
        cwd = self.work_dir / name
        cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(name), "a") as log:
            return subprocess.Popen([str(DEPLOY_DIR / script)], cwd=cwd, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**self.env, "FLWR_HOME": str(cwd / "flwr-home"), **env})

    def _script(self, script: str, *args: str, **env: str) -> None:
        """Run deploy/<script> to completion; RunFailed with its output if it fails."""
        proc = subprocess.run([str(DEPLOY_DIR / script), *args], env={**self.env, **env},
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RunFailed(f"{script} exited with {proc.returncode}: {proc.stdout}{proc.stderr}")

    def log_path(self, name: str) -> Path:
        """The log of "superlink" or "node-<i>" (appended to across restarts)."""
        return self.work_dir / f"{name}.log"

    def state_dir(self, i: int) -> Path:
        return self.work_dir / f"node-{i}" / "state"

    def start(self, timeout: float = 120) -> None:
        """Certificates, SuperLink, node registration, then every SuperNode; returns once all are
        online."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.tls and not (self.certs / "ca.crt").exists():
            self._script("make-certs.sh", str(self.certs), NUM_SUPERNODES=str(self.num_nodes))
        superlink.write_flwr_home(Path(self.env["FLWR_HOME"]), f"127.0.0.1:{self.port}",
                        root_certificates=self.certs / "ca.crt" if self.tls else None)
        self.start_superlink(timeout)
        if self.auth:
            self._script("register-nodes.sh", CONNECTION,
                         *(str(self.certs / f"supernode-{i}.pub") for i in range(self.num_nodes)))
        for i in range(self.num_nodes):
            self.start_node(i, wait=False)
        self.wait_for_nodes(self.num_nodes, timeout)

    def start_superlink(self, timeout: float = 120) -> None:
        """Start the SuperLink (its database in work_dir/superlink/ keeps runs and registered nodes
        across restarts); returns once its port is open."""
        self.superlink = self._spawn("superlink", "start-superlink.sh", {
            "SUPERLINK_HOST": "127.0.0.1", "SUPERLINK_PORT": str(self.port),
            "SUPERLINK_DATABASE": str(self.work_dir / "superlink" / "superlink.db")})
        superlink.wait_for_port(self.port, self.superlink, timeout, self.log_path("superlink"))

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink and every process it started (the ServerApp): a crash, no clean-up."""
        stop_process(self.superlink, grace=0)
        self.superlink = None

    def start_node(self, i: int, *, wait: bool = True, timeout: float = 120, data_path: Path | None = None,
                   **env: str) -> None:
        """Start SuperNode `i` (partition i, its dataset `data_path` or data_paths[i] if any, state in
        state_dir(i), node_env plus `env`); with `wait`, until it is online."""
        if i in self.nodes:
            raise RuntimeError(f"SuperNode {i} is already running")
        data_path = data_path or (self.data_paths[i] if self.data_paths else None)
        self.nodes[i] = self._spawn(f"node-{i}", "start-supernode.sh", {
            "SUPERLINK_ADDRESS": f"127.0.0.1:{self.port}", "PARTITION_ID": str(i),
            "NUM_PARTITIONS": str(self.num_nodes), "STATE_DIR": str(self.state_dir(i)),
            "SUPERNODE_HOST": "127.0.0.1", "SUPERNODE_PORT": str(self.node_ports[i]),
            **({"DATA_PATH": str(data_path)} if data_path else {}), **self.node_env, **env})
        if wait:
            self.wait_for_nodes(len(self.nodes), timeout)

    def stop_node(self, i: int) -> None:
        """Stop SuperNode `i` and its ClientApp processes (SIGTERM: the node signs off at once)."""
        stop_group(self.nodes.pop(i))

    def online_nodes(self) -> int:
        listing = superlink.flwr_cli("supernode", "list", CONNECTION, env=self.env)
        return sum(node.get("status") == "online" for node in listing.get("nodes", []))

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        """Wait until `count` SuperNodes are online at the SuperLink."""
        deadline = time.monotonic() + timeout
        while self.online_nodes() < count:
            for i, proc in self.nodes.items():
                if proc.poll() is not None:
                    raise RunFailed(f"SuperNode {i} exited with {proc.returncode}; log: "
                                    f"{self.log_path(f'node-{i}')}")
            if time.monotonic() > deadline:
                raise RunFailed(f"fewer than {count} SuperNodes online after {timeout:.0f} s")
            time.sleep(1)

    def stop(self) -> None:
        """Stop every SuperNode, then the SuperLink (with the ServerApps they started)."""
        for i in list(self.nodes):
            self.stop_node(i)
        stop_group(self.superlink)
        self.superlink = None

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- runs -------------------------------------------------------------------------------
    def submit(self, run_config: Mapping[str, Any]) -> int:
        """Submit a run of the app (`flwr run`) and return its run id without waiting."""
        return superlink.submit_run(self.app_dir, run_config, self.work_dir / f"run-config-{time.monotonic_ns()}.toml",
                          self.env)

    def wait(self, run_id: int, timeout: float, run_dir: Path | None = None) -> str:
        """The run's final status ("finished:completed", ...) or "timeout"; `run_dir` (the run's
        output-dir) lets it notice the end within a second (see superlink.wait_for_run)."""
        return superlink.wait_for_run(run_id, self.env, time.monotonic() + timeout, run_dir, self.superlink)

    def run(self, run_config: Mapping[str, Any], timeout: float = 3600) -> tuple[int, str]:
        """Submit a run and wait for it: (run id, final status)."""
        run_id = self.submit(run_config)
        output_dir = run_config.get("output-dir")
        return run_id, self.wait(run_id, timeout, Path(output_dir) if output_dir else None)
