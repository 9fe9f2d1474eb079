"""A real deployment on loopback: SuperLink with TLS and SuperNode authentication, 3 SuperNodes as
separate processes, all started with deploy/*.sh (the scripts the containers run).

Every message starts a fresh ClientApp process (imports, backbone, data: ~10 CPU-s each), so the
runs are kept short: evaluation only in the last round.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from feddat_flwr.deploy import DEPLOY_DIR, LocalDeployment
from feddat_flwr.launch import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
                       reason="deploy/make-certs.sh needs openssl and ssh-keygen (openssh-client)"),
]
NUM_NODES = 3


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory):
    with LocalDeployment(tmp_path_factory.mktemp("deployment"), NUM_NODES) as dep:
        yield dep


def _run_config(tiny_model_dir: str, out: Path, num_rounds: int, **extra) -> dict:
    return {"model.name-or-path": tiny_model_dir, "num-rounds": num_rounds, "data.max-train": 32,
            "data.max-test": 16, "train.batch-size": 16, "strategy.eval-every": num_rounds,
            "output-dir": str(out), **extra}


def _rounds(out: Path) -> list[dict]:
    path = out / "results.json"
    return json.loads(path.read_text())["rounds"] if path.exists() else []


def test_supernode_with_unregistered_key_is_refused(deployment: LocalDeployment, tmp_path):
    key = tmp_path / "stranger.key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)], check=True)
    env = {**deployment.env, "FLWR_HOME": str(tmp_path / "home"), "SUPERNODE_KEY": str(key),
           "SUPERLINK_ADDRESS": f"127.0.0.1:{deployment.port}", "PARTITION_ID": "0",
           "NUM_PARTITIONS": str(NUM_NODES), "STATE_DIR": str(tmp_path / "state"), "SUPERNODE_PORT": str(free_port())}
    proc = subprocess.run([str(DEPLOY_DIR / "start-supernode.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Failed to initialize the connection" in proc.stdout + proc.stderr


def test_two_rounds_with_three_supernodes(deployment: LocalDeployment, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    run_id, status = deployment.run(_run_config(tiny_model_dir, out, 2), timeout=600)
    assert status == "finished:completed"
    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert set(record["clients"]) == {"0", "1", "2"}
        assert all(c["num-examples"] == 32 for c in record["clients"].values())
        assert record["failures"] == []
    assert set(rounds[-1]["eval"]) == {"dat", "shared", "local", "majority"}
    for i in range(NUM_NODES):  # every node mirrored its state for this run
        meta = json.loads((deployment.state_dir(i) / f"run-{run_id}" / "meta.json").read_text())
        assert meta["rounds-trained"] == 2


def test_restarted_supernode_resumes_its_local_state(deployment: LocalDeployment, tiny_model_dir, tmp_path):
    """Node 0 is stopped during round 2 and restarted with the same state dir once round 2 is
    recorded: it misses rounds 2 and 3 (round 3 samples the nodes online when round 2 ends) and
    trains round 4 with the `local` adapter it mirrored after round 1, so its mirrored
    rounds-trained continues from 1 to 2 (re-initialised, it would be 1)."""
    out = tmp_path / "run"
    run_id = deployment.submit(_run_config(tiny_model_dir, out, 4, **{
        "strategy.min-train-clients": 2, "strategy.min-available-clients": 2}))
    deadline = time.monotonic() + 600
    while len(_rounds(out)) < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    deployment.stop_node(0)
    while len(_rounds(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    deployment.start_node(0)
    assert deployment.wait(run_id, timeout=max(deadline - time.monotonic(), 1)) == "finished:completed"

    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    trained = [r["round"] for r in rounds if "train" in r["clients"].get("0", {})]
    assert trained[0] == 1 and trained[-1] == 4
    node_id = rounds[0]["clients"]["0"]["node-id"]
    assert rounds[-1]["clients"]["0"]["node-id"] == node_id  # same key, same node
    # the stop hit node 0 during round 2: its pending message came back as an error reply
    assert 2 not in trained
    assert any(f["node-id"] == node_id and f["stage"] == "train" for f in rounds[1]["failures"])
    assert all(set(r["clients"]) == {"0", "1", "2"} or r["round"] in (2, 3) for r in rounds)
    meta = json.loads((deployment.state_dir(0) / f"run-{run_id}" / "meta.json").read_text())
    assert meta["rounds-trained"] == len(trained)
    assert set(rounds[-1]["clients"]["0"]["eval"]) >= {"dat", "local"}
