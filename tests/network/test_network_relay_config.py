"""segmentation_suite.network.relay_config: where the relay URL comes from, in the documented
order (argument, environment, user config file, package file), and what a bad URL does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segmentation_suite.network import relay_config
from segmentation_suite.network.relay_config import (
    ENV_VAR,
    clear_user_relay_url,
    describe_relay_url_source,
    find_relay_url,
    get_relay_url,
    save_user_relay_url,
    validate_relay_url,
)


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A clean slate: no env var, an empty user config dir (XDG_CONFIG_HOME, which platformdirs
    honours on Linux) and an empty stand-in for the package directory."""
    if not sys.platform.startswith("linux"):
        pytest.skip("XDG_CONFIG_HOME steers platformdirs only on Linux")
    config_home = tmp_path / "config"
    package_dir = tmp_path / "package"
    package_dir.mkdir()
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.setattr(relay_config, "_PACKAGE_DIR", package_dir)
    user_file = config_home / "segmentation-suite" / "relay_config.txt"
    return user_file, package_dir / "relay_config.txt"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_user_file_is_in_the_platform_config_dir(places):
    user_file, package_file = places
    assert relay_config.user_config_path() == user_file
    assert relay_config.package_config_path() == package_file


def test_nothing_configured_means_none(places):
    assert find_relay_url() is None and get_relay_url() is None
    hint = describe_relay_url_source()
    assert ENV_VAR in hint and str(places[0]) in hint


def test_precedence_argument_env_user_package(places, monkeypatch):
    user_file, package_file = places
    write(package_file, "wss://package.test/ws\n")
    found = find_relay_url()
    assert (found.url, found.source, found.path) == (
        "wss://package.test/ws",
        "package config",
        package_file,
    )

    write(user_file, "wss://user.test/ws\n")
    found = find_relay_url()
    assert (found.url, found.source, found.path) == ("wss://user.test/ws", "user config", user_file)

    monkeypatch.setenv(ENV_VAR, "  ws://env.test:9000/ws  ")
    found = find_relay_url()
    assert (found.url, found.source) == ("ws://env.test:9000/ws", "environment")
    assert ENV_VAR in describe_relay_url_source()

    found = find_relay_url("wss://argument.test/ws")
    assert (found.url, found.source) == ("wss://argument.test/ws", "argument")
    assert get_relay_url("wss://argument.test/ws") == "wss://argument.test/ws"

    monkeypatch.setenv(ENV_VAR, "")  # empty counts as unset
    assert get_relay_url() == "wss://user.test/ws"
    assert get_relay_url("   ") == "wss://user.test/ws"  # so does a blank argument


def test_comments_blank_lines_and_bom_are_skipped(places):
    user_file, package_file = places
    user_file.parent.mkdir(parents=True)
    user_file.write_bytes(
        b"\xef\xbb\xbf# my relay\n\n   # indented comment\n  wss://a.test/ws  \nwss://b.test/ws\n"
    )
    assert get_relay_url() == "wss://a.test/ws"


def test_a_file_with_only_comments_falls_through(places):
    user_file, package_file = places
    write(user_file, "# nothing here yet\n\n")
    write(package_file, "wss://package.test/ws")
    assert find_relay_url().source == "package config"


def test_the_shipped_example_configures_nothing(places):
    example = Path(relay_config.__file__).with_name("relay_config.example.txt")
    write(places[1], example.read_text(encoding="utf-8"))
    assert get_relay_url() is None


@pytest.mark.parametrize(
    "url",
    [
        "http://relay.test/ws",
        "https://relay.test/ws",
        "relay.test:8765",
        "ftp://relay.test",
        "ws://",
        "wss:///path",
        "ws://relay test/ws",
        "ws://relay.test:0/ws",
        "ws://relay.test:99999/ws",
        "ws://relay.test:port/ws",
        "",
    ],
)
def test_bad_urls_say_what_was_expected(url):
    with pytest.raises(ValueError, match=r"expected a ws:// or wss:// URL"):
        validate_relay_url(url)


def test_https_gets_a_hint():
    with pytest.raises(ValueError, match="use wss://"):
        validate_relay_url("https://relay.test")


@given(st.text(max_size=40))
def test_anything_not_ws_or_wss_is_refused(text):
    if text.strip().lower().startswith(("ws://", "wss://")):
        return
    with pytest.raises(ValueError, match="expected a ws:// or wss:// URL"):
        validate_relay_url(text)


def test_a_bad_setting_is_reported_not_skipped(places, monkeypatch):
    user_file, package_file = places
    write(user_file, "wss://user.test/ws")
    monkeypatch.setenv(ENV_VAR, "http://env.test")
    with pytest.raises(ValueError, match=f"environment variable {ENV_VAR}"):
        get_relay_url()
    assert "not usable" in describe_relay_url_source()  # the UI line does not raise
    monkeypatch.delenv(ENV_VAR)
    write(user_file, "relay.test:8765")
    with pytest.raises(ValueError, match=str(user_file)):
        get_relay_url()
    assert relay_config.default_relay_url() is None  # the import-time lookup never raises


def test_save_and_clear_the_user_url(places):
    user_file, package_file = places
    write(package_file, "wss://package.test/ws")
    path = save_user_relay_url(" wss://saved.test/ws ")
    assert path == user_file
    found = find_relay_url()
    assert (found.url, found.source) == ("wss://saved.test/ws", "user config")
    assert str(user_file) in describe_relay_url_source()
    with pytest.raises(ValueError):
        save_user_relay_url("http://nope.test")
    assert get_relay_url() == "wss://saved.test/ws"  # a refused URL changes nothing
    assert [p.name for p in user_file.parent.iterdir()] == ["relay_config.txt"]  # no temp left
    assert clear_user_relay_url() is True
    assert clear_user_relay_url() is False
    assert find_relay_url().source == "package config"
