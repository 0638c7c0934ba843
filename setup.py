"""Builds the C extension segmentation_suite.network._relayclient, and the relay binary.

The extension links the system's libwebsockets, msgpack-c, OpenSSL and libsodium, found with
pkg-config. A missing library stops the build with the package to install, instead of a
compiler error. A wheel (or `pip install .`) also carries relay_server, built with its Makefile, as
segmentation_suite/bin/relay_server: that is what `segmentation-suite relay` runs.
"""

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# (pkg-config names to try, Debian package, Homebrew formula)
REQUIRED_LIBRARIES = [
    (["libwebsockets"], "libwebsockets-dev", "libwebsockets"),
    # SHA-1 and base64 of the WebSocket handshake, random masks (lws links it anyway); the
    # private rooms' AES-256-GCM and ChaCha20-Poly1305 (EVP).
    (["libcrypto"], "libssl-dev", "openssl"),
    # Private rooms: CPace on ristretto255, Ed25519, the group-key wrap (docs/security.md).
    (["libsodium"], "libsodium-dev", "libsodium"),
    # TLS of the raw engine's wss:// connections (OpenSSL memory BIOs, tls_client.c).
    (["libssl"], "libssl-dev", "openssl"),
    # The relay's JSON (the relay binary ships in the package).
    (["jansson"], "libjansson-dev", "jansson"),
    # msgpack-c is "msgpack-c" from version 6 (Debian 13) and "msgpack" before (Debian 12).
    (
        ["msgpack-c", "msgpack"],
        "libmsgpack-c-dev (Debian 13) or libmsgpack-dev (Debian 12)",
        "msgpack",
    ),
]


def pkg_config(*args: str) -> list[str]:
    out = subprocess.run(["pkg-config", *args], capture_output=True, text=True, check=True)
    return out.stdout.split()


def find_library_flags() -> tuple[list[str], list[str]]:
    if shutil.which("pkg-config") is None:
        sys.exit(
            "error: pkg-config not found. Install it: apt-get install pkg-config "
            "(Debian/Ubuntu) or brew install pkg-config (macOS)."
        )
    cflags: list[str] = []
    libs: list[str] = []
    for names, debian, homebrew in REQUIRED_LIBRARIES:
        found = next(
            (n for n in names if subprocess.run(["pkg-config", "--exists", n]).returncode == 0),
            None,
        )
        if found is None:
            sys.exit(
                f"error: the C library '{names[0]}' was not found by pkg-config.\n"
                f"  Debian/Ubuntu: apt-get install {debian}\n"
                f"  macOS:         brew install {homebrew}"
            )
        cflags += pkg_config("--cflags", found)
        libs += pkg_config("--libs", found)
    return cflags, libs


class BuildExtensionAndRelay(build_ext):
    """build_ext, then relay_server into the package. An in-place (development) build leaves
    the relay where `make -C relay_server` puts it, which the source checkout uses, so that no
    stale copy inside the package can shadow a fresh build."""

    def run(self) -> None:
        super().run()
        if self.inplace:
            return
        if shutil.which("make") is None:
            sys.exit("error: make not found. Install it: apt-get install make (Debian/Ubuntu)")
        relay_build = Path(self.build_temp).resolve() / "relay_server"
        binary = relay_build / "relay_server"
        subprocess.run(["make", "-s", "-C", "relay_server", f"BUILD={relay_build}"], check=True)
        target = Path(self.build_lib) / "segmentation_suite" / "bin" / "relay_server"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, target)


cflags, libs = find_library_flags()
# protocol/ holds what the relay compiles too (frame header, constants): one C definition for both.
sources = sorted(str(p) for p in [*Path("csrc").glob("*.c"), *Path("protocol").glob("*.c")])

setup(
    cmdclass={"build_ext": BuildExtensionAndRelay},
    ext_modules=[
        Extension(
            "segmentation_suite.network._relayclient",
            sources=sources,
            include_dirs=["csrc", "protocol"],
            extra_compile_args=[
                "-std=c11",
                "-O2",
                "-Wall",
                "-Wextra",
                "-fvisibility=hidden",
                *cflags,
            ],
            extra_link_args=libs,
        )
    ],
)
