"""The source distribution carries every file the extension's and the relay's builds read.

A wheel built from an sdist (what pip does with a release on PyPI) sees only the sdist's files:
a header left out of it, such as the shared protocol/ folder's, breaks the build for users
while every build from the git checkout still works. The fast test asks the C preprocessor for
each source's dependencies inside the unpacked sdist alone; the slow one builds a wheel from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The include directories of the two builds (setup.py's Extension, relay_server/Makefile),
# as paths inside the source tree.
EXTENSION_INCLUDES = ("csrc", "protocol")
RELAY_INCLUDES = ("relay_server/src", "protocol")


def pkg_config_cflags() -> list[str]:
    packages = ["libwebsockets", "jansson", "libcrypto", "libssl", "libsodium", "libnats"]
    msgpack = next(
        n
        for n in ("msgpack-c", "msgpack")
        if subprocess.run(["pkg-config", "--exists", n]).returncode == 0
    )
    out = subprocess.run(
        ["pkg-config", "--cflags", *packages, msgpack], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


@pytest.fixture(scope="module")
def unpacked_sdist(tmp_path_factory) -> Path:
    # From a copy of the files git knows (as a release is made from a clean checkout): setuptools
    # otherwise reuses the egg-info file list a previous build left behind.
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("sdist")
    built = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (archive,) = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    (tree,) = (p for p in out.iterdir() if p.is_dir())
    return tree


def dependencies_missing(tree: Path, sources: list[Path], includes: tuple[str, ...]) -> str:
    """The preprocessor's complaint when a source's headers are not all in `tree`, else ''."""
    flags = [f"-I{tree / d}" for d in includes] + pkg_config_cflags()
    python_include = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    result = subprocess.run(
        ["cc", "-MM", "-D_GNU_SOURCE", f"-I{python_include}", *flags] + [str(s) for s in sources],
        capture_output=True,
        text=True,
    )
    return "" if result.returncode == 0 else result.stderr


def test_sdist_holds_every_source_and_header_of_both_builds(unpacked_sdist):
    tree = unpacked_sdist
    for folder in ("csrc", "protocol", "relay_server/src"):
        tracked = {p.name for p in (ROOT / folder).glob("*.[ch]")}
        shipped = {p.name for p in (tree / folder).glob("*.[ch]")}
        assert tracked <= shipped, f"{folder}: missing {sorted(tracked - shipped)}"
    assert (tree / "relay_server/Makefile").is_file()
    extension = sorted([*(tree / "csrc").glob("*.c"), *(tree / "protocol").glob("*.c")])
    assert dependencies_missing(tree, extension, EXTENSION_INCLUDES) == ""
    relay = sorted([*(tree / "relay_server/src").glob("*.c"), *(tree / "protocol").glob("*.c")])
    assert dependencies_missing(tree, relay, RELAY_INCLUDES) == ""
    # Nothing of the development tree rides along.
    assert not (tree / "tests").exists() and not (tree / "bench").exists()
    assert not list(tree.rglob("*.o")) and not list(tree.rglob("*.so"))


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SANITIZED_BUILD") == "1",
    reason="pip builds a normal extension; the normal stage runs this test",
)
@pytest.mark.skipif(shutil.which("make") is None, reason="the relay's build needs make")
def test_a_wheel_builds_from_the_sdist_alone(unpacked_sdist, tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(unpacked_sdist),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("segmentation_suite/network/_relayclient") for n in names)
    assert "segmentation_suite/bin/relay_server" in names
