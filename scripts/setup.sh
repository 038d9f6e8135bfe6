#!/usr/bin/env bash
# Prepare a Debian 12 machine (or this checkout) for building and testing:
# system packages, the .venv with the project and its dev tools, and the
# generated protobuf modules.  Idempotent: each step checks first, so a
# second run takes well under a second.
#
# PYTHON picks the interpreter for the venv (default: python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(containerd runc busybox-static protobuf-compiler libprotobuf-dev
          iproute2 python3-venv make)
VENV=.venv
STAMP=$VENV/.rebootshim-installed
# One module per generated .proto (see scripts/gen_proto.py and
# docs/ARCHITECTURE.md); any of them missing means generate again.
GENERATED=(task/shim_pb2.py types/mount_pb2.py types/task_pb2.py
           events/task_pb2.py events/service_pb2.py runc/options_pb2.py
           runtimeoptions_pb2.py rpc/status_pb2.py ttrpc/request_pb2.py)
apt_updated=

log() { echo "setup: $*" >&2; }

apt_update_once() {
    if [[ -z $apt_updated ]]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
}

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f '${Status}\n' "$pkg" 2>/dev/null |
                grep -q '^install ok installed$'; then
            echo "$pkg"
        fi
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]]; then
        log "missing packages ${missing[*]}; run this as root"
        exit 1
    fi
    apt_update_once
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"
}

install_venv() {
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating $VENV"
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
    # The stamp holds the hash of the pyproject.toml it was installed from.
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [[ -f $STAMP && $(cat "$STAMP") == "$want" &&
          -x $VENV/bin/containerd-shim-reboot-v2 ]]; then
        return 0
    fi
    log "pip install -e .[dev]"
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    echo "$want" > "$STAMP"
}

generate_protos() {
    local name
    for name in "${GENERATED[@]}"; do
        if [[ ! -f src/rebootshim/api/$name ]]; then
            # gen_proto.py may need `apt-get download`, which needs the
            # package lists that slim Debian images ship without (they may be
            # compressed, e.g. *_Packages.lz4).
            compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null ||
                apt_update_once
            log "generating protobuf modules"
            "$VENV/bin/python" scripts/gen_proto.py
            return 0
        fi
    done
}

install_packages
install_venv
generate_protos
