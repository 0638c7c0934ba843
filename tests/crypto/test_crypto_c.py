"""The private-room C code on its own (tests/crypto/c/test_crypto.c), compiled here with ASan and
UBSan so that every run of the Python suite also runs it under the sanitizers: CPace against the
draft's vectors, the session state machine, hostile key-exchange messages, sealed transfers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["cpace.c", "cpace_session.c", "chunk_cipher.c", "group_key.c"]


def test_c_crypto_units_under_sanitizers(tmp_path: Path) -> None:
    compiler = shutil.which("clang") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (clang or cc) on PATH")
    binary = tmp_path / "test_crypto"
    build = subprocess.run(
        [
            compiler,
            "-std=c11",
            "-D_GNU_SOURCE",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
            f"-I{ROOT / 'csrc'}",
            str(ROOT / "tests/crypto/c/test_crypto.c"),
            *(str(ROOT / "csrc" / name) for name in SOURCES),
            "-lsodium",
            "-lcrypto",
            "-ljansson",
            "-o",
            str(binary),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    # The sanitizer runtime is linked in; an LD_PRELOAD from a sanitized pytest run must not
    # load a second copy.
    env = {"PATH": "/usr/bin:/bin", "ASAN_OPTIONS": "detect_leaks=1"}
    run = subprocess.run(
        [str(binary), str(ROOT / "tests/vectors/cpace_ristretto255.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("0 failed")
    assert int(run.stdout.split()[0]) >= 120  # every group of checks ran
