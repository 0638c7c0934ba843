"""Fixtures of the app tests: a QApplication of this module's own, and a clean relay config.

Qt runs on the offscreen platform (no display needed). The QApplication is made here and shut
down after the module, like tests/api/test_api_qt.py does: SyncClients of later tests in the
same process must not find a Qt application, or their callbacks would wait for a GUI thread.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")
try:
    from qtpy.QtWidgets import QApplication
except Exception as exc:  # qtpy missing, or no Qt binding that loads here
    pytest.skip(f"no usable Qt binding (PySide6): {exc}", allow_module_level=True)


@pytest.fixture(scope="module")
def qapp(qapp_args):
    if QApplication.instance() is not None:
        pytest.skip("another test left a QApplication running; the app tests need their own")
    app = QApplication(qapp_args)
    yield app
    app.shutdown()  # PySide6: instance() is None again afterwards


@pytest.fixture(autouse=True)
def isolated_relay_config(tmp_path, monkeypatch):
    """The relay URL lookup sees only what a test sets: no environment variable, a user
    config dir under tmp_path (platformdirs honours XDG_CONFIG_HOME on Linux) and no package
    file. The real user config is never read or written."""
    from segmentation_suite.network import relay_config

    monkeypatch.delenv(relay_config.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    # Session folders of kept round models (platformdirs' user data dir) stay here too.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setattr(relay_config, "_PACKAGE_DIR", tmp_path / "package")
    assert str(relay_config.user_config_path()).startswith(str(tmp_path))
    return relay_config


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two cores are shared by several test runs: keep torch to one thread."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
