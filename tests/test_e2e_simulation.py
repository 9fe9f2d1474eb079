"""Real federated runs: `flwr run` on a private simulation SuperLink, Ray actors, tiny ViLT."""

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from datasets import Dataset, DatasetDict, Image as DatasetImage
from peft import PeftModel
from flwr.serverapp import GaussianPrivacyEvent
from PIL import Image
from safetensors.torch import load_file
from transformers import ViltModel

from feddat_flwr.config import load_config
from feddat_flwr.flower.privacy import accountant_for
from feddat_flwr.tools.launch import run_simulation
from feddat_flwr.tools.superlink import APP_DIR, free_port, stop_process, submit_run, tool_env, wait_for_port
from feddat_flwr.tools.superlink import write_flwr_home


# The 2-round federation of 3 clients the tests below vary (a hostile client, DP).
BASE = {"num-rounds": 4, "data.max-train": 48, "data.max-test": 24, "train.batch-size": 16,
        "strategy.weighting": "uniform"}


def _simulate(tmp_path_factory, tiny_model_dir, name, num_clients=3, **overrides):
    root = tmp_path_factory.mktemp(name)
    outcome = run_simulation({"model.name-or-path": tiny_model_dir, **BASE, **overrides,
                              "output-dir": str(root / "run")},
                             num_clients=num_clients, work_dir=root / "flwr", timeout=600, stream=False)
    assert outcome.status == "finished:completed"
    return root / "run", json.loads((root / "run" / "results.json").read_text())


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory, tiny_model_dir):
    return _simulate(tmp_path_factory, tiny_model_dir, "honest")


@pytest.mark.e2e
def test_a_federation_writes_complete_results(honest_run, tiny_model_dir):
    out, results = honest_run
    assert results["config"]["strategy"]["weighting"] == "uniform"
    assert results["config"]["num-rounds"] == 4
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3, 4]
    for record in results["rounds"]:
        assert set(record["clients"]) == {"0", "1", "2"}
        for client in record["clients"].values():
            assert client["num-examples"] == 48
            assert {"loss", "shared-task", "shared-kd", "dat-task", "dat-kd", "seconds"} <= set(client["train"])
            assert set(client["eval"]) == {"dat", "shared", "local", "majority", "num-examples"}
        assert set(record["eval"]) == {"dat", "shared", "local", "majority"}
        # one adapter per client each way; the last round adds the final evaluation's
        assert record["bytes-up"] > 0
        assert record["bytes-down"] == record["bytes-up"] * (2 if record["round"] == 4 else 1)
        assert record["failures"] == [] and record["seconds"] > 0
        assert all(c["update-norm"] > 0 for c in record["clients"].values())
        assert "privacy" not in record
    assert results["stopped"] is None
    assert results["final"] == results["rounds"][-1]["eval"]
    assert (out / "accuracy.png").is_file()
    PeftModel.from_pretrained(ViltModel.from_pretrained(tiny_model_dir), str(out / "shared-adapter"))


def _client_dataset(path, answers_of, n=24, multi=False):
    colours = ["red", "green", "blue"]
    rows = {"image": [Image.new("RGB", (64, 64), colours[i % 3]) for i in range(n)],
            "question": ["what color is the shape?"] * n}
    rows["answers" if multi else "answer"] = [answers_of(i) for i in range(n)]
    ds = Dataset.from_dict(rows).cast_column("image", DatasetImage())
    DatasetDict({"train": ds, "test": ds.select(range(8))}).save_to_disk(str(path))


@pytest.mark.e2e
def test_own_datasets_and_a_client_sending_nan_that_is_dropped_while_the_others_learn_as_without_it(
        tmp_path_factory, tiny_model_dir):
    """Three clients on their own datasets with their own label spaces (colours; yes/no; several
    answers per question); partition 2 replies with a NaN shared adapter every round
    (attack_mod). Its replies are failures, and the two honest clients end exactly where they end
    in a federation of the two of them alone (same seeds: the hostile client changed nothing they
    see)."""
    data = tmp_path_factory.mktemp("own-data")
    colours = ["red", "green", "blue"]
    _client_dataset(data / "three" / "partition_0", lambda i: colours[i % 3])
    _client_dataset(data / "three" / "partition_1", lambda i: "yes" if i % 2 else "no")
    _client_dataset(data / "three" / "partition_2", lambda i: [colours[i % 3]] * 3 + ["purple"], multi=True)
    (data / "two").mkdir()
    for pid in range(2):
        (data / "two" / f"partition_{pid}").symlink_to(data / "three" / f"partition_{pid}")
    common = {"num-rounds": 2, "train.batch-size": 8, "train.lr": 0.01}
    out, hostile = _simulate(tmp_path_factory, tiny_model_dir, "hostile", num_clients=3, **common,
                             **{"data.path": str(data / "three"), "attack.kind": "nan", "attack.partitions": "2"})
    _, alone = _simulate(tmp_path_factory, tiny_model_dir, "alone", num_clients=2, **common,
                         **{"data.path": str(data / "two")})
    last = hostile["rounds"][-1]["clients"]
    hostile_node = last["2"]["node-id"]  # evaluated by the final evaluate message
    for record, reference in zip(hostile["rounds"], alone["rounds"], strict=True):
        assert [(f["node-id"], f["stage"]) for f in record["failures"]] == [(hostile_node, "train")]
        assert "non-finite" in record["failures"][0]["reason"]
        assert {p for p, c in record["clients"].items() if "train" in c} == {"0", "1"}
        for pid in ("0", "1"):
            client, same = record["clients"][pid], reference["clients"][pid]
            assert client["num-examples"] == 24 and client["train"]["dropped-examples"] == 0
            assert client["update-norm"] == same["update-norm"] and client["eval"] == same["eval"]
    assert last["1"]["eval"]["majority"] == 0.5  # yes/no, alternating
    # every answer given 24 times: the tie goes to "blue", which scores 1 on 2 of the 8 test rows
    assert last["2"]["eval"]["majority"] == pytest.approx(2 / 8)
    adapter = load_file(str(out / "shared-adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in adapter.values())


@pytest.mark.e2e
def test_central_dp_records_epsilon_clipping_and_stops_at_the_target_epsilon(tmp_path_factory, tiny_model_dir):
    """central-fixed with a target epsilon between that of 2 and of 3 releases: the run of 4 rounds
    ends cleanly after round 2, with the privacy account of each round and the last released adapter."""
    reference = accountant_for(load_config({"privacy.target-delta": 1e-5}).privacy, population=3)
    event = GaussianPrivacyEvent(noise_multiplier=0.8, sample_size=3, population_size=3)
    epsilons = []
    for _ in range(3):
        reference.compose(event)
        epsilons.append(reference.get_privacy_spent().epsilon)
    out, results = _simulate(tmp_path_factory, tiny_model_dir, "dp", **{
        "privacy.mode": "central-fixed", "privacy.noise-multiplier": 0.8,
        "privacy.clipping-norm": 0.05, "privacy.target-epsilon": (epsilons[1] + epsilons[2]) / 2})
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["stopped"].startswith("privacy budget") and results["final"] == results["rounds"][-1]["eval"]
    for record, epsilon in zip(results["rounds"], epsilons):
        privacy = record["privacy"]
        assert privacy["mode"] == "central-fixed" and privacy["releases"] == record["round"]
        assert privacy["epsilon"] == pytest.approx(epsilon)
        assert privacy["delta"] == 1e-5 and privacy["clipping-norm"] == 0.05
        clients = record["clients"].values()
        assert privacy["clipped-share"] == pytest.approx(sum(c["train"]["clipped"] for c in clients) / 3)
        assert all(c["update-norm"] <= 0.05 * (1 + 1e-4) for c in clients)  # as clipped by the clients
    assert results["rounds"][0]["privacy"]["clipped-share"] == 1.0  # 0.05 is below a round's update
    adapter = load_file(str(out / "shared-adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in adapter.values())


def _crash_after_checkpoint(tiny_model_dir, config, work, num_clients=3, timeout=300.0) -> int:
    """Start the app on a private simulation SuperLink and SIGKILL the SuperLink and everything
    it started (the ServerApp, Ray) as soon as a checkpoint of round 2 or later exists; the round
    of the checkpoint the crash left."""
    port = free_port()
    env = tool_env(work / "flwr-home")
    write_flwr_home(work / "flwr-home", f"127.0.0.1:{port}")
    latest = Path(config["output-dir"]) / "checkpoint" / "latest.json"
    with open(work / "superlink.log", "w") as log:
        superlink = subprocess.Popen(
            [str(Path(sys.executable).with_name("flower-superlink")), "--insecure", "--simulation", "--host",
             "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"],
            env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(port, superlink, 60, work / "superlink.log")
            submit_run(APP_DIR, config, work / "run-config.toml", env, "--federation-config",
                       f"num-supernodes={num_clients} client-resources-num-cpus=1")
            deadline = time.monotonic() + timeout
            while not (latest.is_file() and json.loads(latest.read_text())["round"] >= 2):
                assert time.monotonic() < deadline, "no checkpoint of round 2"
                time.sleep(0.1)
            tree = [psutil.Process(superlink.pid), *psutil.Process(superlink.pid).children(recursive=True)]
            for proc in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            psutil.wait_procs(tree, timeout=10)
        finally:
            stop_process(superlink, grace=1)
    return json.loads(latest.read_text())["round"]


@pytest.mark.e2e
def test_a_run_killed_after_round_2_resumes_and_ends_as_if_never_stopped(honest_run, tmp_path_factory,
                                                                         tiny_model_dir):
    """The honest 4-round run, killed (SIGKILL of the SuperLink, the ServerApp and Ray) once round 2
    is checkpointed, then resumed with resume-from: 4 rounds in results.json, and the rounds after
    the checkpoint have the uninterrupted run's figures (same seed, one machine)."""
    root = tmp_path_factory.mktemp("resumed")
    out, state = root / "run", root / "client-state"
    config = {"model.name-or-path": tiny_model_dir, **BASE, "output-dir": str(out), "client-state-dir": str(state)}
    (root / "first").mkdir()
    checkpointed = _crash_after_checkpoint(tiny_model_dir, config, root / "first")
    assert checkpointed in (2, 3)
    outcome = run_simulation({**config, "resume-from": str(out)}, num_clients=3, work_dir=root / "second",
                             timeout=600, stream=False)
    assert outcome.status == "finished:completed"
    resumed, reference = json.loads((out / "results.json").read_text()), honest_run[1]
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3, 4]
    assert resumed["info"]["resumed-after-rounds"] == [checkpointed]
    assert resumed["info"]["run-key"] == json.loads((out / "checkpoint" / "latest.json").read_text())["run-key"]
    for record, expected in zip(resumed["rounds"], reference["rounds"]):
        assert record["lr"] == expected["lr"]
        for pid, client in record["clients"].items():
            same = expected["clients"][pid]
            # bit-identical: replies are aggregated in partition order, whatever order they arrived in
            assert client["update-norm"] == same["update-norm"], (record["round"], pid)
            assert client["train"]["loss"] == same["train"]["loss"] and client["eval"] == same["eval"]
    assert resumed["final"] == reference["final"]
    resumed_adapter = load_file(str(out / "shared-adapter" / "adapter_model.safetensors"))
    reference_adapter = load_file(str(honest_run[0] / "shared-adapter" / "adapter_model.safetensors"))
    for key, tensor in reference_adapter.items():
        assert torch.equal(resumed_adapter[key], tensor), key
