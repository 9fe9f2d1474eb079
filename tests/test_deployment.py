"""A real deployment on loopback: SuperLink with TLS and SuperNode authentication, 3 SuperNodes as
separate processes, all started with deploy/*.sh (the scripts the containers run).

The SuperNodes run feddat-flwr's long-lived ClientApp executor (the default); one run puts a node
on Flower's stock executor (a fresh flwr-clientapp process per message, ~10 CPU-s each), which
must keep working beside it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from datasets import Dataset

from feddat_flwr.data.cli import export_easyvqa
from helpers.local_deployment import DEPLOY_DIR, LocalDeployment, stop_group
from feddat_flwr.tools.superlink import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
                       reason="deploy/make-certs.sh needs openssl and ssh-keygen (openssh-client)"),
]
NUM_NODES = 3


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir):
    """Each SuperNode trains on its own dataset directory (node-config data-path): easy-VQA
    partitions exported in the client-dataset format."""
    data = tmp_path_factory.mktemp("node-data")
    paths = export_easyvqa({"model.name-or-path": tiny_model_dir, "data.max-train": 32, "data.max-test": 16},
                           NUM_NODES, data)
    with LocalDeployment(tmp_path_factory.mktemp("deployment"), NUM_NODES, data_paths=paths) as dep:
        yield dep


def _run_config(tiny_model_dir: str, out: Path, num_rounds: int, **extra) -> dict:
    return {"model.name-or-path": tiny_model_dir, "num-rounds": num_rounds, "data.max-train": 32,
            "data.max-test": 16, "train.batch-size": 16, "strategy.eval-every": num_rounds,
            "output-dir": str(out), **extra}


def _mirrored_meta(state_dir: Path, out: Path, server_round: int) -> dict:
    """A node's mirrored state after `server_round`, under the run key results.json names."""
    run_key = json.loads((out / "results.json").read_text())["info"]["run-key"]
    return json.loads((state_dir / f"run-{run_key}" / f"round-{server_round}" / "meta.json").read_text())


def _rounds(out: Path) -> list[dict]:
    path = out / "results.json"
    return json.loads(path.read_text())["rounds"] if path.exists() else []


def test_supernode_with_unregistered_key_is_refused(deployment: LocalDeployment, tmp_path):
    key = tmp_path / "stranger.key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)],
                   check=True)
    env = {**deployment.env, "FLWR_HOME": str(tmp_path / "home"), "SUPERNODE_KEY": str(key),
           "SUPERLINK_ADDRESS": f"127.0.0.1:{deployment.port}", "PARTITION_ID": "0",
           "NUM_PARTITIONS": str(NUM_NODES), "STATE_DIR": str(tmp_path / "state"),
           "SUPERNODE_PORT": str(free_port())}
    log = tmp_path / "stranger.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(DEPLOY_DIR / "start-supernode.sh")], env=env, cwd=tmp_path,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert proc.wait(timeout=120) != 0
    finally:
        stop_group(proc)
    assert "Failed to initialize the connection to the SuperLink" in log.read_text()


def test_two_rounds_with_three_supernodes_one_on_the_stock_executor(deployment: LocalDeployment, tiny_model_dir,
                                                                     tmp_path):
    deployment.stop_node(2)
    deployment.start_node(2, FEDDAT_EXECUTOR="stock")
    try:
        out = tmp_path / "run"
        _, status = deployment.run(_run_config(tiny_model_dir, out, 2), timeout=600)
    finally:
        deployment.stop_node(2)
        deployment.start_node(2)
    assert status == "finished:completed"
    logs = [deployment.log_path(f"node-{i}").read_text() for i in range(NUM_NODES)]
    assert all("[feddat] SuperNode with the warm ClientApp executor" in log for log in logs[:2])
    assert "[feddat] SuperNode with the stock ClientApp executor" in logs[2]
    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert set(record["clients"]) == {"0", "1", "2"}
        assert all(c["num-examples"] == 32 for c in record["clients"].values())
        assert record["failures"] == []
    assert set(rounds[-1]["eval"]) == {"dat", "shared", "local", "majority"}
    for i in range(NUM_NODES):  # every node mirrored its state for this run
        assert _mirrored_meta(deployment.state_dir(i), out, 2)["rounds-trained"] == 2


def _wait_until(condition, deadline: float, what: str) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_restarted_supernode_resumes_its_local_state(deployment: LocalDeployment, tiny_model_dir, tmp_path):
    """Node 0 is stopped while it trains round 2 and restarted with the same state dir once round 2
    is aggregated (with the error reply of its message as a failure). With min-train-clients =
    min-available-clients = 3 the server waits for it in round 3 and samples all three nodes (with
    2, round 3 would sample 2 of whichever nodes are online: not deterministic). Node 0 trains
    round 3 with the `local` adapter it mirrored after round 1: its mirrored rounds-trained
    continues from 1 to 2 (re-initialised, it would be 1)."""
    out = tmp_path / "run"
    run_id = deployment.submit(_run_config(tiny_model_dir, out, 3, **{
        "strategy.min-train-clients": NUM_NODES, "strategy.min-available-clients": NUM_NODES}))
    received = re.compile(rf"\[RUN {run_id}(, ROUND \d+)?\]\n.*Receiving: train message")
    deadline = time.monotonic() + 600
    _wait_until(lambda: len(received.findall(deployment.log_path("node-0").read_text())) >= 2, deadline,
                "node 0 to receive its round-2 train message")
    deployment.stop_node(0)
    # round 1's record is written once round 2's replies (which bring its evaluation) are in
    _wait_until(lambda: len(_rounds(out)) >= 1, deadline, "round 2 to end")
    deployment.start_node(0)
    assert deployment.wait(run_id, timeout=max(deadline - time.monotonic(), 1), run_dir=out) == "finished:completed"

    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    trained = [{pid for pid, c in r["clients"].items() if "train" in c} for r in rounds]
    assert trained == [{"0", "1", "2"}, {"1", "2"}, {"0", "1", "2"}]
    assert [[f["stage"] for f in r["failures"]] for r in rounds] == [[], ["train"], []]
    node_id = rounds[0]["clients"]["0"]["node-id"]
    assert rounds[2]["clients"]["0"]["node-id"] == node_id  # same key, same node
    assert _mirrored_meta(deployment.state_dir(0), out, 3)["rounds-trained"] == 2
    assert set(rounds[2]["clients"]["0"]["eval"]) >= {"dat", "local"}


def test_a_node_with_bad_data_fails_clearly_and_the_others_go_on(deployment: LocalDeployment, tiny_model_dir,
                                                                   tmp_path):
    broken = tmp_path / "broken"
    (broken / "images").mkdir(parents=True)
    (broken / "images" / "x.png").write_bytes(b"not a png")
    Dataset.from_dict({"image_path": ["images/x.png"] * 4, "question": ["what color?"] * 4,
                       "answer": ["red"] * 4}).save_to_disk(str(broken))
    deployment.stop_node(2)
    deployment.start_node(2, data_path=broken)
    try:
        out = tmp_path / "run"
        _, status = deployment.run(_run_config(tiny_model_dir, out, 1, **{"data.test-fraction": 0.5}), timeout=600)
        assert status == "finished:completed"
        (record,) = _rounds(out)
        assert {pid for pid, c in record["clients"].items() if "train" in c} == {"0", "1"}
        failures = record["failures"]
        assert {f["stage"] for f in failures} == {"train", "evaluate"}
        assert all("cannot decode the image" in f["reason"] and "x.png" in f["reason"] for f in failures)
        assert len({f["node-id"] for f in failures}) == 1
        assert failures[0]["node-id"] not in {c["node-id"] for c in record["clients"].values()}
    finally:
        deployment.stop_node(2)
        deployment.start_node(2)


def _checkpoint_round(out: Path) -> int:
    latest = out / "checkpoint" / "latest.json"
    return json.loads(latest.read_text())["round"] if latest.exists() else 0


def test_a_crashed_superlink_resumes_the_run_from_its_checkpoint(deployment: LocalDeployment, tiny_model_dir,
                                                                  tmp_path):
    """The SuperLink (with the ServerApp) is SIGKILLed once round 2 of 4 is checkpointed, started again
    on its database, and the run submitted again with resume-from: it ends with 4 rounds whose
    round-3/4 figures and final adapter equal an uninterrupted run's, bit for bit (same seed, same
    nodes; each client resumes from its own mirrored state)."""
    def config(out: Path, **extra) -> dict:
        return _run_config(tiny_model_dir, out, 4, **{"strategy.eval-every": 1, "strategy.min-train-clients": NUM_NODES,
                                                     "strategy.min-available-clients": NUM_NODES, **extra})

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert deployment.run(config(whole), timeout=600)[1] == "finished:completed"
    deployment.submit(config(cut))
    deadline = time.monotonic() + 600
    _wait_until(lambda: _checkpoint_round(cut) >= 2, deadline, "round 2's checkpoint")
    deployment.kill_superlink()
    stopped_after = _checkpoint_round(cut)
    assert stopped_after < 4 and len(_rounds(cut)) < 4
    deployment.start_superlink()
    deployment.wait_for_nodes(NUM_NODES)  # they reconnect on their own, with their registered keys
    _, status = deployment.run(config(cut, **{"resume-from": str(cut)}), timeout=max(deadline - time.monotonic(), 1))
    assert status == "finished:completed"

    resumed, uninterrupted = json.loads((cut / "results.json").read_text()), json.loads((whole / "results.json").read_text())
    assert resumed["info"]["resumed-after-rounds"] == [stopped_after]
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3, 4]
    for a, b in zip(resumed["rounds"], uninterrupted["rounds"], strict=True):
        assert a["eval"] == b["eval"]
        assert {p: c["train"]["loss"] for p, c in a["clients"].items()} == \
            {p: c["train"]["loss"] for p, c in b["clients"].items()}
    adapter = "shared-adapter/adapter_model.safetensors"
    assert (cut / adapter).read_bytes() == (whole / adapter).read_bytes()
