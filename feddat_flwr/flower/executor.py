"""A long-lived ClientApp executor for one SuperNode (`flower-supernode --isolation process`).

Flower's own executor starts a fresh `flwr-clientapp` process for every message: it imports torch,
transformers and peft (10-15 s here), installs the FAB and loads the model and the client's data
before any training. This executor is one process per SuperNode that does the imports once and
serves every task the SuperNode creates, in order, with Flower's own task helpers
(`flwr.supernode.runtime.run_clientapp`: pull the task input, run the ClientApp, push the reply and
the task output, a heartbeat per task). The ClientApp's process caches (the backbone, the encoded
data, the resolved run config) then hold between messages, as they do in a simulation's Ray actor;
the client's private state still travels through `context.state` and the node's mirror, so a
restart behaves as with the stock executor.

- A task whose FAB (the app's code) differs from the one already loaded is handed to a stock
  `flwr-clientapp` process, after which the executor restarts itself (`os.execv`) so that the next
  task imports the new code.
- It pulls a message's objects with a first retry after 50 ms instead of Flower's 1 s (a warm
  executor asks before the SuperNode holds them).
- A task the SuperNode gave up before its input arrived (see _Task) is reported as failed as soon
  as the SuperNode has a newer one, instead of stalling the node until Flower's pull timeout.
- SIGTERM/SIGINT: the task in progress is reported as failed (Flower's exit handlers), then it exits;
  it also exits when the SuperNode (`--parent-pid`) is gone.

It relies on Flower internals (flwr 1.41-1.42, pinned in pyproject.toml; tests/test_deployment.py
runs it). Started by feddat_flwr.flower.supernode; see docs/deployment.md.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import subprocess
import sys
import threading
import time
from logging import DEBUG, ERROR, INFO
from pathlib import Path

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.config import get_project_dir
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import register_signal_handlers
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.telemetry import EventType
from flwr.supernode.runtime import run_clientapp

TASK_POLL_SECONDS = 0.05  # how often the SuperNode is asked for a new task
ABANDONED_CHECK_SECONDS = 1.0  # while a task's input is awaited: is there a newer task? (see _Task)
PULL_FIRST_RETRY_SECONDS = 0.05  # Flower's default first retry is 1 s
PULL_RETRY_CAP_SECONDS = 0.5
TASK_TYPE = TaskType.CLIENT_APP
WARM_IMPORTS = ("torch", "transformers", "peft", "datasets")  # the ClientApp's heavy dependencies

# run_clientapp.pull_task_input pulls with Flower's default back-off; in this process, shorter.
run_clientapp.pull_and_inflate_object_from_tree = functools.partial(
    run_clientapp.pull_and_inflate_object_from_tree,
    initial_backoff=PULL_FIRST_RETRY_SECONDS, backoff_cap=PULL_RETRY_CAP_SECONDS)


class Executor:
    """Acquire the SuperNode's ClientApp tasks and run each in this process."""

    def __init__(self, runtime_api_address: str, *, root_certificates: Path | None = None,
                 superexec_auth_secret: bytes | None = None):
        self.address = runtime_api_address
        self.certificates = root_certificates.read_bytes() if root_certificates else None
        self.root_certificates = root_certificates
        interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if superexec_auth_secret:
            interceptors.append(SuperExecAuthHttpInterceptor(
                master_secret=superexec_auth_secret, protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})))
        self.control = self._client(interceptors)
        self.load_app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        self.fab_hash: str | None = None  # the app code this process has imported
        self._task: _Task | None = None
        register_signal_handlers(event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE,
                                 exit_message="ClientApp executor stopped.", exit_handlers=[self._on_exit])

    def _client(self, interceptors: list) -> RuntimeHttpClient:
        return RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.certificates is None,
            root_certificates=self.certificates, interceptors=interceptors,
            retry_invoker=make_simple_http_retry_invoker())

    def serve(self) -> None:
        log(INFO, "[feddat executor] serving ClientApp tasks of the SuperNode at %s", self.address)
        task = None
        while True:
            task = task or self._acquire()
            if task is None:
                time.sleep(TASK_POLL_SECONDS)
                continue
            task = self.run(*task)

    def _acquire(self) -> tuple[str, str] | None:
        """(token, FAB hash) of a new task of the SuperNode, or None."""
        reply = self.control.AcquireTask(AcquireTaskRequest(supported_task_types=[TASK_TYPE]))
        return (reply.token, reply.task.fab_hash) if reply.HasField("task") and reply.token else None

    def run(self, token: str, fab_hash: str) -> tuple[str, str] | None:
        """One task: in this process, or (new app code) in a stock flwr-clientapp, then restart.
        Returns a newer task if this one turned out to be abandoned by the SuperNode (see _Task)."""
        if self.fab_hash is not None and fab_hash != self.fab_hash:
            log(INFO, "[feddat executor] new app code (FAB %s): this task runs in a fresh flwr-clientapp, then "
                "the executor restarts", fab_hash[:12])
            self._stock(token)
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
        self._task = _Task(self._client([RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                                         RuntimeTokenHttpInterceptor(token)]))
        try:
            return self._task.run(self._load, self._acquire)
        finally:
            self._task.close()
            self._task = None

    def _load(self, fab_id: str, fab_version: str, fab_hash: str):
        self.fab_hash = fab_hash
        return self.load_app(fab_id, fab_version, fab_hash)

    def _stock(self, token: str) -> None:
        """Run one task the way Flower's own executor does: a fresh flwr-clientapp process."""
        tls = (["--root-certificates", str(self.root_certificates)] if self.root_certificates else ["--insecure"])
        subprocess.run([str(Path(sys.executable).with_name("flwr-clientapp")), "--runtime-api-address",
                        self.address, "--token", token, *tls], check=False)

    def _on_exit(self) -> None:
        if self._task is not None:
            self._task.fail("ClientApp executor stopped")


class _Abandoned(Exception):
    def __init__(self, newer: tuple[str, str]):
        super().__init__("abandoned by the SuperNode")
        self.newer = newer  # (token, FAB hash) of the task that came after


class _Task:
    """One ClientApp task over its own token-authenticated Runtime API client.

    A SuperNode handles one message at a time: it creates the next task only once the current one
    has replied, or when it gave a message up. It can give one up after creating its task (flwr
    1.41-1.42: a message of a run that stopped, e.g. after a SuperLink restart), and that task's
    input never arrives; Flower's executor would leave a process waiting for it, this one would
    stall every later message. So while the input is awaited, a newer task of the SuperNode means
    this one is abandoned: it is reported as failed and the newer one runs next.
    """

    def __init__(self, client: RuntimeHttpClient):
        self.client = client
        self.context = None
        self.heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        self.heartbeat.start()
        self.reported = False

    def _pull_input(self, acquire) -> tuple:
        """(message, context, run, FAB); _Abandoned if a newer task came first."""
        box: dict = {}

        def pull() -> None:
            try:
                box["input"] = run_clientapp.pull_task_input(self.client)
            except BaseException as ex:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = ex

        thread = threading.Thread(target=pull, daemon=True, name="feddat-task-input")
        thread.start()
        while thread.is_alive():
            thread.join(ABANDONED_CHECK_SECONDS)
            if thread.is_alive() and (newer := acquire()) is not None:
                raise _Abandoned(newer)
        if "error" in box:
            raise box["error"]
        return box["input"]

    def run(self, load_app, acquire) -> tuple[str, str] | None:
        message = reply = None
        try:
            message, self.context, run, fab = self._pull_input(acquire)
            log(DEBUG, "[feddat executor] task input pulled (%s message)", message.metadata.message_type)
            if not get_project_dir(run.fab_id, run.fab_version, fab.hash_str).exists():
                install_from_fab(fab.content, skip_prompt=True)
            app = load_app(run.fab_id, run.fab_version, fab.hash_str)
            reply = app(message=message, context=self.context)
            status, details = SubStatus.COMPLETED, ""
        except _Abandoned as abandoned:
            log(INFO, "[feddat executor] the SuperNode gave a task up before its input arrived; next task")
            self.fail("the SuperNode gave this message up before its input arrived")
            return abandoned.newer
        except Exception as ex:  # noqa: BLE001 - reported to the server as the ClientApp's error, as Flower does
            code = (ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(ex, LoadClientAppError)
                    else ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
            reason = f"{type(ex)}:<'{ex}'>"
            log(ERROR, "ClientApp raised an exception", exc_info=ex)
            status, details = SubStatus.FAILED, reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        if reply is not None and self.context is not None:
            try:
                run_clientapp.push_message(self.client, reply, self.context)
            except Exception as ex:  # noqa: BLE001 - the task output below still ends the task
                log(ERROR, "Failed to push reply message", exc_info=ex)
        self._report(status, details)
        log(DEBUG, "[feddat executor] task done")
        return None

    def fail(self, details: str) -> None:
        self._report(SubStatus.FAILED, details)

    def _report(self, status: str, details: str) -> None:
        if not self.reported:
            self.reported = True
            run_clientapp.push_task_output(self.client, self.context, status, details)

    def close(self) -> None:
        if self.heartbeat.is_running:
            self.heartbeat.stop()
        self.client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="feddat-flwr's long-lived ClientApp executor for one SuperNode")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port")
    parser.add_argument("--root-certificates", type=Path, default=None,
                        help="CA certificate of a Runtime API served with TLS (default: plain HTTP on loopback)")
    parser.add_argument("--superexec-auth-secret-file", type=Path, default=None)
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process (the SuperNode) ends")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    secret = (load_superexec_auth_secret(secret_file=str(args.superexec_auth_secret_file))
              if args.superexec_auth_secret_file else None)
    for module in WARM_IMPORTS:  # before the first task, not during it (not the app's own code: that comes from the FAB)
        importlib.import_module(module)
    Executor(args.runtime_api_address, root_certificates=args.root_certificates,
             superexec_auth_secret=secret).serve()


if __name__ == "__main__":
    main()
