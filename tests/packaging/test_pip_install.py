"""`pip install .` in a fresh virtualenv builds the extension and the relay, and both work.

This is how a user installs the client, so it is tested as such: a new venv, a plain
`pip install` of this source tree (build isolation included), then imports in a fresh
interpreter that cannot see the development tree.
"""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# What scripts/run_tests.py sets to point the tests at its builds (and, in the sanitizer stage,
# at its instrumented copy of the package); a user's interpreter has none of it.
DEVELOPMENT_VARIABLES = (
    "PYTHONPATH",
    "LD_PRELOAD",
    "SEGMENTATION_SUITE_EXPECT_EXTENSION_UNDER",
    "RELAY_SERVER_BIN",
)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SANITIZED_BUILD") == "1",
    reason="pip builds a normal extension; the normal stage runs this test",
)
def test_pip_install_in_a_fresh_venv(tmp_path):
    user_environment = {k: v for k, v in os.environ.items() if k not in DEVELOPMENT_VARIABLES}
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        env=user_environment,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    probe = (
        "import segmentation_suite.network._relayclient as extension\n"
        "import segmentation_suite.network as network\n"
        "import numpy\n"
        "data = network.serialize_weights({'w': numpy.ones((2, 3), numpy.float32)})\n"
        "print(extension.__file__)\n"
        "print(network.deserialize_weights(data)['w'].sum())\n"
    )
    imported = subprocess.run(
        [str(python), "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=user_environment,
    )
    assert imported.returncode == 0, imported.stderr
    extension_path, total = imported.stdout.split()
    assert extension_path.startswith(str(environment)), "imported the development tree"
    assert float(total) == 6.0

    # The relay binary travels in the package, and the console script runs it.
    located = subprocess.run(
        [
            str(python),
            "-c",
            "from segmentation_suite.relay_process import find_relay_binary as f\nprint(f())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=user_environment,
    )
    assert located.returncode == 0, located.stderr
    assert located.stdout.strip().startswith(str(environment)), located.stdout
    relay = subprocess.run(
        [str(environment / "bin" / "segmentation-suite"), "relay", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=user_environment,
    )
    assert relay.returncode == 0, relay.stderr
    assert relay.stdout.startswith("relay_server "), relay.stdout
