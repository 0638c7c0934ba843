#!/usr/bin/env bash
# The project's one entry point, for people and for CI. Each command first makes sure the
# machine has what it needs (Debian packages, a virtualenv with the Python packages, built
# binaries), so that a fresh Debian 12 or 13 machine needs nothing but this script.
#
#   ./dev.sh demo    a local relay and simulated colleagues exchanging weights
#   ./dev.sh test    the whole test suite (what CI runs)
#   ./dev.sh build   set up and build only
#   ./dev.sh relay   build and run the relay in the foreground (pass relay options after it)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
root=$PWD
venv=$root/.venv

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# --- set-up -----------------------------------------------------------------------------

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian names msgpack-c differently across releases (12: libmsgpack-dev, 13: libmsgpack-c-dev),
# and glib too (13: libglib2.0-0t64), and clang's runtime (needed for libFuzzer) is versioned;
# pick what this release has. The GL, xkbcommon and fontconfig libraries are what the Qt
# wheels (PySide6, for the app and its tests) load even offscreen; Xvfb and the xcb libraries
# are for the app's screenshots, taken on a virtual X display.
debian_packages() {
    local msgpack=libmsgpack-c-dev glib=libglib2.0-0t64
    apt-cache show libmsgpack-c-dev >/dev/null 2>&1 || msgpack=libmsgpack-dev
    apt-cache show libglib2.0-0t64 >/dev/null 2>&1 || glib=libglib2.0-0
    echo build-essential pkg-config git curl ca-certificates openssl \
        libwebsockets-dev libwslay-dev libjansson-dev libssl-dev libcmocka-dev libsodium-dev "$msgpack" \
        clang clang-format python3 python3-dev python3-venv \
        libegl1 libgl1 libopengl0 libxkbcommon0 libfontconfig1 libdbus-1-3 "$glib" \
        xvfb xauth libx11-xcb1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 \
        libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-shm0 \
        libxcb-sync1 libxcb-util1 libxcb-xfixes0 libxcb-xkb1 systemd
    # Node.js runs the benchmark's peer relay; a machine may already have it from elsewhere.
    command -v npm >/dev/null 2>&1 || echo nodejs npm
}

install_system_packages() {
    # The stamp holds the package list, so that a list grown by a later commit installs again.
    local stamp=$root/build/.apt-done wanted
    wanted=$(debian_packages | tr '\n' ' ')
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && return 0
    local need=()
    # apt-cache needs fresh lists on a new machine, so update before looking anything up.
    say "installing Debian packages (apt-get)"
    as_root apt-get update -qq
    wanted=$(debian_packages | tr '\n' ' ')
    for pkg in $wanted; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    local clang_major
    clang_major=$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n 1)
    if ! dpkg -s "libclang-rt-$clang_major-dev" >/dev/null 2>&1; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            "libclang-rt-$clang_major-dev" >/dev/null
    fi
    mkdir -p "$root/build" && printf '%s' "$wanted" >"$stamp"
}

python_for_venv() {
    # Prefer the python3 on PATH (it may be newer than Debian's); fall back to Debian's.
    if python3 -c 'import venv, sysconfig, os; os.stat(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null; then
        command -v python3
    else
        echo /usr/bin/python3
    fi
}

setup_python() {
    local stamp=$venv/.deps-done
    if [ ! -x "$venv/bin/python" ]; then
        say "creating virtualenv .venv"
        "$(python_for_venv)" -m venv "$venv"
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
        say "installing Python packages into .venv (pip)"
        "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
        # torch 2.13.0 is the CPU build; an unpinned torch would download a CUDA build.
        "$venv/bin/python" -m pip install -q "torch==2.13.0"
        "$venv/bin/python" -m pip install -q -e ".[test,train,export]" --no-build-isolation
        touch "$stamp"
    fi
}

setup_node() {
    # Only the benchmark's Node peer relay needs npm packages.
    if [ ! -d bench/peers/node_modules ]; then
        say "installing the Node peer relay's packages (npm)"
        (cd bench/peers && npm install --silent --no-audit --no-fund >/dev/null)
    fi
}

build_relay() {
    say "building relay_server"
    make -s -C relay_server -j"$(nproc)"
}

build_extension() {
    say "building the _relayclient extension"
    "$venv/bin/python" setup.py -q build_ext --inplace >/dev/null
}

setup_all() {
    install_system_packages
    setup_python
    build_relay
    build_extension
}

# --- commands ---------------------------------------------------------------------------

case "${1:-help}" in
build)
    setup_all
    ;;
demo)
    shift
    setup_all
    exec "$venv/bin/python" -m segmentation_suite demo "$@"
    ;;
relay)
    shift
    install_system_packages
    build_relay
    exec relay_server/build/relay_server "$@"
    ;;
test)
    shift
    setup_all
    setup_node
    exec "$venv/bin/python" scripts/run_tests.py "$@"
    ;;
*)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    ;;
esac
