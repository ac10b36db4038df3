"""Home, machine.json and config.toml: defaults, clear errors, comment-preserving updates."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path

import pytest

from hm_agent.config import (
    DEFAULT_CONFIG_TEXT,
    ConfigError,
    ensure_config,
    load_config,
    parse_config,
    update_cloud_config,
)
from hm_agent.home import HomeError, ensure_home, ensure_machine_id, paths


def test_defaults_ship_cloud_disabled_and_loopback(hm_home: Path) -> None:
    hp = ensure_home()
    ensure_config(hp)
    assert stat.S_IMODE(hp.home.stat().st_mode) == 0o700
    assert stat.S_IMODE(hp.config.stat().st_mode) == 0o600
    cfg = load_config(hp)
    assert (cfg.listen_host, cfg.listen_port, cfg.cloud_enabled) == ("127.0.0.1", 8090, False)
    assert cfg.cloud_base_url == "https://api.haltonmeter.com"
    assert cfg.capture_hosts == [] and cfg.pricing_overrides == [] and cfg.warnings == []
    assert "# " in hp.config.read_text()  # commented defaults


def test_capture_hosts_and_pricing_overrides(tmp_path: Path) -> None:
    text = DEFAULT_CONFIG_TEXT + (
        '[[capture.hosts]]\nhost = "LLM.internal:8443"\ndialect = "anthropic"\n'
        '[[pricing.override]]\nmodel = "m"\ninput_per_mtok = "1"\n'
    )
    cfg = parse_config(text, tmp_path / "config.toml")
    assert cfg.capture_hosts == [("llm.internal:8443", "anthropic")]
    assert cfg.pricing_overrides == [{"model": "m", "input_per_mtok": "1"}]


def test_malformed_toml_names_line_and_key(tmp_path: Path) -> None:
    text = '[proxy]\nlisten_host = "127.0.0.1"\nlisten_port = eighty\n'
    with pytest.raises(ConfigError) as err:
        parse_config(text, tmp_path / "config.toml")
    msg = str(err.value)
    assert "config.toml:3" in msg and "listen_port" in msg and "\n" not in msg


def test_wrong_type_names_line_and_key(tmp_path: Path) -> None:
    text = '[proxy]\nlisten_port = "8090"\n[cloud]\nenabled = "yes"\n'
    with pytest.raises(ConfigError, match=r"config.toml:2: proxy.listen_port must be an integer"):
        parse_config(text, tmp_path / "config.toml")
    with pytest.raises(ConfigError, match=r"config.toml:4: cloud.enabled must be true or false"):
        parse_config(text.replace('"8090"', "8090"), tmp_path / "config.toml")


def test_unknown_keys_are_reported(tmp_path: Path) -> None:
    cfg = parse_config('[proxy]\nlisten_prot = 1\n[colud]\nx = 1\n', tmp_path / "config.toml")
    assert any("config.toml:2" in w and "proxy.listen_prot" in w for w in cfg.warnings)
    assert any("[colud]" in w for w in cfg.warnings)


def test_missing_trusted_ca_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        parse_config('[proxy]\nssl_verify_upstream_trusted_ca = "/nope.pem"\n', tmp_path / "c.toml")


def test_update_cloud_config_keeps_comments_and_keys(hm_home: Path) -> None:
    hp = ensure_home()
    hp.config.write_text(DEFAULT_CONFIG_TEXT.replace("[proxy]\n", "[proxy]\n# my note\n") + "# trailing\n")
    os.chmod(hp.config, 0o640)
    update_cloud_config(enabled=True, base_url="http://127.0.0.1:9999", workspace_id="ws_1")
    text = hp.config.read_text()
    assert "# my note" in text and "# trailing" in text
    assert stat.S_IMODE(hp.config.stat().st_mode) == 0o640
    cfg = load_config(hp)
    assert (cfg.cloud_enabled, cfg.cloud_base_url, cfg.cloud_workspace_id) == (True, "http://127.0.0.1:9999", "ws_1")
    update_cloud_config(enabled=False, workspace_id=None)
    data = tomllib.loads(hp.config.read_text())
    assert data["cloud"] == {"enabled": False, "base_url": "http://127.0.0.1:9999"}
    assert not list(hp.home.glob(".config.toml.tmp*"))


def test_update_cloud_config_creates_file(hm_home: Path) -> None:
    update_cloud_config(enabled=True)
    assert load_config().cloud_enabled is True
    assert stat.S_IMODE(paths().config.stat().st_mode) == 0o600


def test_machine_id_is_made_once_and_kept(hm_home: Path) -> None:
    hp = ensure_home()
    first = ensure_machine_id(hp)
    assert ensure_machine_id(hp) == first
    copied = "7b0c8a9e-4d47-4d55-9a55-2f1d3f0e6a01"
    hp.machine.write_text(json.dumps({"machine_id": copied}))
    assert ensure_machine_id(hp) == copied


def test_corrupt_machine_json_is_not_overwritten(hm_home: Path) -> None:
    hp = ensure_home()
    hp.machine.write_text("{not json")
    with pytest.raises(HomeError, match="corrupt.*left untouched"):
        ensure_machine_id(hp)
    assert hp.machine.read_text() == "{not json"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    monkeypatch.setenv("HALTON_METER_HOME", str(parent / "home"))
    try:
        with pytest.raises(HomeError, match="cannot create"):
            ensure_home()
    finally:
        parent.chmod(0o700)


def test_home_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    monkeypatch.setenv("HALTON_METER_HOME", str(target))
    with pytest.raises(HomeError):
        ensure_home()


def test_long_home_gets_a_short_private_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    sock = paths(deep).control_socket
    assert len(os.fsencode(sock)) < 108
    assert sock == paths(deep).control_socket  # stable: the CLI finds the daemon's socket
