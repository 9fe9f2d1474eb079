#!/usr/bin/env bash
# Build both images and run a TLS + SuperNode-authentication federation in them, from nothing:
# installs podman (Debian/Ubuntu, as root), makes a local base image, builds the SuperLink and
# SuperNode images, starts docker/compose.yaml with podman-compose on the host network, runs a
# 2-round tiny federation (SuperNode 0 on its own dataset from its own volume, the others on
# embedded partitions), checks results.json, then removes every container, volume and image it
# made. See docker/README.md ("The smoke test") for what it checks and how long it takes.
#
#   docker/smoke.sh                 (make smoke-containers)
#
# Settings (environment variables):
#   BASE_IMAGE      an image with Python 3.11+ as `python` to build on; unset: one is made with
#                   mmdebstrap (Debian bookworm, no registry needed)
#   TORCH_INDEX     where the CPU torch wheel comes from; unset: PyTorch's CPU index, or this
#                   machine's package index when PyTorch's is not reachable
#   SUPERLINK_PORT  the SuperLink's port on 127.0.0.1 [8000]; SuperNodes use 9094-9096
#   KEEP_IMAGES=1   keep the images (and their build cache) for the next run
#   CUDA=1          also build the CUDA SuperNode image (~5.5 GB of wheels), report its size and
#                   CUDA version, and remove it (nothing runs on it: no GPU needed)
# Every name it creates starts with feddat-smoke (containers, volumes) or is tagged :smoke
# (images); it removes those at start, so a run after a failed one starts clean. On failure it
# names the failing step, keeps its logs in $WORK (/tmp/feddat-smoke) and exits non-zero. The
# last line holds the measured time of every step.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${WORK:-/tmp/feddat-smoke}
project=feddat-smoke
tag=smoke
superlink_image=localhost/feddat-flwr-superlink:$tag
supernode_image=localhost/feddat-flwr-supernode:$tag
cuda_image=localhost/feddat-flwr-supernode:$tag-cuda
own_base_image=localhost/feddat-flwr-base:$tag
port=${SUPERLINK_PORT:-8000}
app_uid=1000  # the images' default APP_UID: the keys are chowned to it
tools=${XDG_CACHE_HOME:-$HOME/.cache}/feddat-flwr-smoke  # podman-compose's venv, kept like apt's packages
run_dir=/outputs/smoke
# podman's settings for this run only (/etc is left alone): runc, as crun 1.8 fails on hybrid
# cgroups ("cgroups in hybrid mode not supported"), and ulimits a root without CAP_SYS_RESOURCE
# may set (podman's defaults fail with "setrlimit RLIMIT_NOFILE: Operation not permitted").
export CONTAINERS_CONF=$work/containers.conf

log() { echo "smoke: $*" >&2; }

current=setup
times=()
step() {  # step NAME COMMAND...: run it, record its time; a failure exits through on_exit
    current=$1
    shift
    local start=$SECONDS
    log "== $current"
    "$@"
    times+=("$current=$((SECONDS - start))s")
}

# -- clean-up (by this script's own names only) ------------------------------------------------
containers() { podman ps -a --format '{{.Names}}' | grep -E "^$project[-_]" || true; }
volumes() { podman volume ls --format '{{.Name}}' | grep -E "^${project}_" || true; }
# buildah's working containers that an interrupted build of ours left: each is named after the
# image its step started from, one of the builds' labelled images or the base image made here
working_containers() {
    local starts id name
    starts=$(podman images -a -q --filter label=io.feddat.smoke; basename "${own_base_image%:*}")
    podman ps -a --external --format '{{.ID}} {{.Names}}' | while read -r id name; do
        if [[ "$name" == *-working-container* ]] && grep -qxF "${name%-working-container*}" <<<"$starts"; then
            echo "$id"
        fi
    done
}

remove_all() {
    local names
    local out=$work/logs/clean.log
    names=$(containers)
    if [[ -n "$names" ]]; then
        # stopped first: `rm -f` of running containers races with their exit in podman 4.3
        podman stop -t 15 $names >>"$out" 2>&1 || true
        podman rm -f $names >>"$out" 2>&1
    fi
    names=$(working_containers)
    if [[ -n "$names" ]]; then podman rm -f $names >>"$out" 2>&1; fi
    names=$(volumes)
    if [[ -n "$names" ]]; then podman volume rm -f $names >>"$out" 2>&1; fi
    [[ "${KEEP_IMAGES:-0}" != 1 ]] || return 0
    # every image and stage image the builds made carries their label; then the base made here
    names=$(podman images -a -q --filter label=io.feddat.smoke | sort -u)
    if [[ -n "$names" ]]; then podman rmi -f $names >>"$out" 2>&1; fi
    if podman image exists "$own_base_image"; then podman rmi -f "$own_base_image" >>"$out" 2>&1; fi
}

on_exit() {
    local rc=$? name
    trap - EXIT INT TERM
    set +e
    if [[ $rc -ne 0 ]]; then
        log "FAILED in step '$current' (exit $rc); logs: $work/logs"
        name=$(ls -t "$work/logs" 2>/dev/null | head -1)
        if [[ -n "$name" ]]; then
            log "--- last lines of logs/$name"
            tail -n 15 "$work/logs/$name" | sed 's/^/    /' >&2
        fi
        for name in $(containers 2>/dev/null); do
            log "--- last lines of $name"
            podman logs --tail 25 "$name" 2>&1 | sed 's/^/    /' >&2
        done
    fi
    if command -v podman >/dev/null && ! remove_all; then
        log "clean-up failed: see podman ps -a / volume ls / images for $project and :$tag"
        rc=1
    fi
    if [[ $rc -eq 0 ]]; then
        rm -rf "$work"
        echo "smoke: ok ${times[*]} total=${SECONDS}s"
    fi
    exit $rc
}
# -- steps -------------------------------------------------------------------------------------
install() {
    local packages=(podman runc crun slirp4netns fuse-overlayfs uidmap containernetworking-plugins iptables
                    catatonit mmdebstrap openssl openssh-client python3-venv)
    local command missing=0
    for command in podman runc mmdebstrap openssl ssh-keygen; do
        command -v "$command" >/dev/null || missing=1
    done
    python3 -c 'import ensurepip' 2>/dev/null || missing=1
    if [[ $missing == 1 ]]; then
        apt-get update -qq >"$work/logs/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" \
            >>"$work/logs/apt.log" 2>&1
    fi
    if [[ ! -x "$tools/bin/podman-compose" ]]; then
        python3 -m venv "$tools"
        "$tools/bin/pip" install --quiet "podman-compose==1.6.0" >"$work/logs/pip.log" 2>&1
    fi
}

make_base() {  # Debian bookworm with python3 and a venv at /opt/venv first on PATH (Python 3.11);
    # one kept with KEEP_IMAGES=1 is reused (a new import would invalidate the whole build cache)
    podman image exists "$own_base_image" && return
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,passwd,ca-certificates \
        --customize-hook='chroot "$1" python3 -m venv /opt/venv' bookworm "$work/base.tar" \
        >"$work/logs/mmdebstrap.log" 2>&1
    podman import --quiet \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$work/base.tar" "$own_base_image" >/dev/null
    rm "$work/base.tar"
}

# This machine's pip settings (`pip config list`: its files and PIP_* variables) as a pip.conf at
# /etc/pip.conf in the build, with every file and folder they name mounted read-only; a file://
# index is mounted with its parent folder, where a local index keeps the files its pages link
# to. Nothing when pip has no settings (a machine with plain internet). Sets build_mounts.
# pip_settings CONF [KEY...]: write CONF without the keys given.
build_mounts=()
pip_settings() {
    local conf=$1 section key value token path
    shift
    local -A settings=()
    local lines
    lines=$(python3 -m pip config list 2>/dev/null | sed -n "s/^\([^.]*\)\.\([^=]*\)='\(.*\)'$/\1 \2 \3/p")
    # PIP_* variables (section :env:) win over the files, as in pip
    while read -r section key value; do
        if [[ -n "$key" ]]; then settings[${section/#:env:/global}.$key]=$value; fi
    done < <(grep -v '^:env: ' <<<"$lines"; grep '^:env: ' <<<"$lines")
    for key in config-file "$@"; do  # PIP_CONFIG_FILE names where pip reads, not a setting
        unset "settings[global.$key]"
    done
    build_mounts=()
    [[ ${#settings[@]} -gt 0 ]] || return 0
    for section in $(printf '%s\n' "${!settings[@]}" | cut -d. -f1 | sort -u); do
        echo "[$section]"
        for key in "${!settings[@]}"; do
            if [[ "$key" == "$section".* ]]; then echo "${key#*.} = ${settings[$key]}"; fi
        done
    done >"$conf"
    build_mounts=(-v "$conf:/etc/pip.conf:ro")
    for value in "${settings[@]}"; do
        for token in $value; do
            path=${token#file://}
            if [[ "$token" == file://* && -d "$path" ]]; then path=$(dirname "$path"); fi
            if [[ "$path" == /* && -e "$path" ]]; then build_mounts+=(-v "$path:$path:ro"); fi
        done
    done
}

package_index() {  # the index pip uses here (pip config or PIP_INDEX_URL), else PyPI
    python3 -m pip config get global.index-url 2>/dev/null || echo "${PIP_INDEX_URL:-https://pypi.org/simple}"
}

# build TARGET IMAGE [--build-arg ...]: one role of docker/Dockerfile, logged to logs/IMAGE.log.
# --isolation chroot: RUN steps are podman's own child processes, so an interrupted build stops
# them too (with OCI isolation, podman 4.3 leaves a running step behind, e.g. a model bake).
build() {
    local target=$1 image=$2
    shift 2
    podman build --format docker --isolation chroot --network host --layers --force-rm \
        --label "io.feddat.smoke=${image##*:}" \
        -f "$root/docker/Dockerfile" --target "$target" -t "$image" --build-arg BASE_IMAGE="$base_image" \
        "${build_mounts[@]}" "$@" "$root" >"$work/logs/${image##*/}.log" 2>&1
}

# The CUDA SuperNode, built and inspected, not run. torch comes from the package index (its Linux
# wheels are CUDA builds); find-links are left out, since a local CPU wheel there (2.13.0+cpu)
# would win over the index's 2.13.0. --no-cache: where the CPU build took torch from the same
# index, its cached deps stage (with the CPU wheel) would match these build arguments too. No
# baked model: nothing runs on this image here.
build_cuda() {
    local torch
    pip_settings "$work/pip-cuda.conf" find-links
    build supernode "$cuda_image" --no-cache --build-arg TORCH_INDEX="$(package_index)"
    torch=$(podman run --rm --no-healthcheck --name "$project-cuda" --entrypoint python "$cuda_image" -c \
        'import torch; assert torch.version.cuda, torch.__version__; print(torch.__version__, "CUDA", torch.version.cuda)')
    log "CUDA image: $(podman image inspect --format '{{.Size}}' "$cuda_image" | numfmt --to=si)B, torch $torch"
    # this image and its stage images (a CUDA deps stage is ~7 GB)
    podman rmi -f $(podman images -a -q --filter "label=io.feddat.smoke=${cuda_image##*:}" | sort -u) >/dev/null
}

compose() {
    FEDDAT_CERTS=$work/certs IMAGE_TAG=$tag SUPERLINK_PORT=$port SUPERNODE_0_DATA=/dataset \
        "$tools/bin/podman-compose" --in-pod false -p "$project" \
        -f "$root/docker/compose.yaml" -f "$root/docker/compose.hostnet.yaml" "$@" \
        >>"$work/logs/compose.log" 2>&1
}

flwr_cli() {  # flwr ARGS... in a one-shot SuperLink container, connection "smoke", the app at /src
    podman run --rm --no-healthcheck --name "$project-flwr" --network host --env-file "$root/deploy/offline.env" \
        -v "$work/certs/ca.crt:/certs/ca.crt:ro" -v "$root:/src:ro" --entrypoint /bin/bash "$superlink_image" -c '
            export FLWR_HOME=/tmp/flwr-home && mkdir -p "$FLWR_HOME"
            printf "[superlink]\ndefault = \"smoke\"\n\n[superlink.smoke]\naddress = \"127.0.0.1:%s\"\nroot-certificates = \"/certs/ca.crt\"\n" \
                "$0" >"$FLWR_HOME/config.toml"
            exec flwr "$@"' "$port" "$@"
}

healthy() {  # healthy CONTAINER: run its HEALTHCHECK by hand (no systemd timer runs it) until it passes
    local deadline=$((SECONDS + 120))
    until podman healthcheck run "$1" >/dev/null 2>&1; do
        [[ "$(podman inspect --format '{{.State.Running}}' "$1")" == true ]] || { log "$1 exited"; return 1; }
        ((SECONDS < deadline)) || { log "$1 not healthy after 120 s"; return 1; }
        sleep 2
    done
}

json() {  # json EXPR < JSON: a field of flwr's JSON reply
    python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"
}

federation() {
    local name ready=0 run_id status
    for p in "$port" 9094 9095 9096; do
        ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { log "port $p is in use (SUPERLINK_PORT=...)"; return 1; }
    done
    NUM_SUPERNODES=3 "$root/deploy/make-certs.sh" "$work/certs" superlink >/dev/null
    chown "$app_uid" "$work"/certs/*.key  # mode 600, read by the containers' user

    # SuperNode 0's own dataset: 24 training / 12 test questions written by the image's
    # `python -m feddat_flwr.data` into its dataset volume (the other nodes cap theirs at 32 / 16,
    # which tells them apart in results.json)
    podman volume create "${project}_supernode-0-dataset" >/dev/null
    podman run --rm --no-healthcheck --name "$project-dataset" --user 0 -v "${project}_supernode-0-dataset:/dataset" \
        --entrypoint /bin/bash "$supernode_image" -c '
            python -m feddat_flwr.data split --easy-vqa --num-partitions 3 -c data.max-train=24 \
                -c data.max-test=12 --out /tmp/parts && cp -r /tmp/parts/partition_0/. /dataset/' \
        >"$work/logs/dataset.log" 2>&1

    # podman 4.3 cannot wait for service_healthy: start in the order compose.yaml declares
    compose up -d --no-build --no-deps superlink
    healthy "${project}_superlink_1"
    compose up -d --no-build --no-deps register
    [[ "$(podman wait "${project}_register_1")" == 0 ]] || { log "register exited non-zero"; return 1; }
    compose up -d --no-build --no-deps supernode-0 supernode-1 supernode-2
    for i in 0 1 2; do
        healthy "${project}_supernode-${i}_1"
    done
    for _ in $(seq 60); do
        ready=$(flwr_cli supernode list smoke --format json \
                | json 'sum(n.get("status") == "online" for n in d.get("nodes", []))' || true)
        [[ "$ready" == 3 ]] && break
        sleep 2
    done
    [[ "$ready" == 3 ]] || { log "only $ready of 3 SuperNodes online"; return 1; }

    run_id=$(flwr_cli run /src smoke --format json --run-config "num-rounds=2 data.max-train=32 \
        data.max-test=16 train.batch-size=16 strategy.eval-every=2 strategy.min-train-clients=3 \
        strategy.min-available-clients=3 output-dir='$run_dir'" | json 'd["run-id"]')
    log "run $run_id submitted"
    for _ in $(seq 90); do
        status=$(flwr_cli ls smoke --run-id "$run_id" --format json | json 'd["runs"][0]["status"]' || true)
        [[ "$status" == finished* ]] && break
        sleep 10
    done
    [[ "$status" == finished:completed ]] || { log "run $run_id: ${status:-no status}"; return 1; }
    podman cp "${project}_superlink_1:$run_dir/results.json" "$work/results.json"
    check_results "$work/results.json"
}

check_results() {  # 2 rounds, all 3 clients every round, no failure; client 0 on its own dataset
    python3 - "$1" <<'EOF'
import json, sys
rounds = json.load(open(sys.argv[1]))["rounds"]
assert [r["round"] for r in rounds] == [1, 2], [r["round"] for r in rounds]
for r in rounds:
    assert set(r["clients"]) == {"0", "1", "2"} and r["failures"] == [], (r["clients"].keys(), r["failures"])
sizes = {pid: (c["num-examples"], c["eval"]["num-examples"]) for pid, c in rounds[-1]["clients"].items()}
assert sizes == {"0": (24, 12), "1": (32, 16), "2": (32, 16)}, sizes
accuracy = {variant: round(v["mean"], 3) for variant, v in rounds[-1]["eval"].items()}
print(f"smoke: results.json: 2 rounds of clients 0-2, client 0 on its own dataset; accuracy {accuracy}",
      file=sys.stderr)
EOF
}

# -- main --------------------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || { log "run as root (rootful podman; apt-get installs what is missing)"; exit 2; }
rm -rf "$work"
mkdir -p "$work/logs"
trap on_exit EXIT
trap 'exit 130' INT TERM
printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n\n[engine]\nruntime = "runc"\n' \
    >"$CONTAINERS_CONF"
step install install
step clean remove_all  # what an earlier run left
if [[ -n "${BASE_IMAGE:-}" ]]; then
    base_image=$BASE_IMAGE
else
    base_image=$own_base_image
    step base make_base
fi
pip_settings "$work/pip.conf"
if [[ -z "${TORCH_INDEX:-}" ]] && ! python3 -c \
        "import urllib.request; urllib.request.urlopen('https://download.pytorch.org/whl/cpu/torch/', timeout=10)" 2>/dev/null; then
    TORCH_INDEX=$(package_index)
    log "download.pytorch.org is not reachable: torch from $TORCH_INDEX"
fi
# The model is baked once, into the stage both roles share; unbaked, the SuperLink and the three
# SuperNodes would each build their own copy at start: four times the CPU.
args=(--build-arg BAKE_MODEL=1)
if [[ -n "${TORCH_INDEX:-}" ]]; then args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX"); fi
step build-superlink build superlink "$superlink_image" "${args[@]}"
step build-supernode build supernode "$supernode_image" "${args[@]}"
[[ "${CUDA:-0}" != 1 ]] || step build-supernode-cuda build_cuda
step federation federation
