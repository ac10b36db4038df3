"""The cloud commands with no daemon: state from the files, disconnect still wipes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from hm_agent.cloudlink import CloudLinkError, load_credentials, save_pairing
from hm_agent.config import ensure_config
from hm_agent.home import ensure_home, ensure_machine_id
from hm_agent.store import Store
from hm_proto.server import generate_token
from tests.support.daemon import run_cli


def paired_home(home: Path, base_url: str = "http://127.0.0.1:1") -> str:
    hp = ensure_home(home)
    ensure_config(hp)
    machine_id = ensure_machine_id(hp)
    rng = random.Random(5)
    token = generate_token(lambda n: rng.randbytes(n))
    with Store(hp.db) as store:
        save_pairing(hp, store, token=token, base_url=base_url, workspace_id="ws-1",
                     workspace_slug="acme", workspace_name="Acme", machine_id=machine_id)
    return token


def test_status_without_a_daemon_reads_the_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    paired_home(home)
    snap = json.loads(run_cli(home, "cloud", "status", "--json").stdout)
    assert snap["state"] == "DEGRADED" and snap["daemon_running"] is False
    assert snap["workspace_slug"] == "acme" and "halton-meter start" in snap["hint"]
    assert json.loads(run_cli(home, "status", "--json").stdout)["cloud"]["state"] == "DEGRADED"
    with Store(home / "db.sqlite") as store:
        store.set_cloud_state(paused=1, paused_reason="paused_unauthorised")
    snap = json.loads(run_cli(home, "cloud", "status", "--json").stdout)
    assert (snap["state"], snap["paused_reason"]) == ("PAUSED", "paused_unauthorised")
    human = run_cli(home, "status").stdout
    assert "PAUSED" in human and "pair it again with `halton-meter cloud connect`" in human


def test_exposed_or_linked_credentials_are_refused_with_the_fix(tmp_path: Path) -> None:
    home = tmp_path / "home"
    paired_home(home)
    hp = ensure_home(home)
    creds = home / "cloud-credentials.json"
    creds.chmod(0o644)
    with pytest.raises(CloudLinkError, match="chmod 600"):
        load_credentials(hp)
    creds.chmod(0o600)
    moved = tmp_path / "elsewhere.json"
    creds.rename(moved)
    creds.symlink_to(moved)
    with pytest.raises(CloudLinkError, match="symlink"):
        load_credentials(hp)


def test_disconnect_with_the_backend_unreachable_still_wipes_and_says_how_to_revoke(tmp_path: Path) -> None:
    home = tmp_path / "home"
    paired_home(home)
    out = run_cli(home, "cloud", "disconnect")
    assert out.returncode == 0, out.stderr
    assert "Could not revoke the token" in out.stdout and "settings/devices" in out.stdout
    assert "credentials wiped" in out.stdout
    assert not (home / "cloud-credentials.json").exists() and not (home / "cloud.key").exists()
    assert "enabled = false" in (home / "config.toml").read_text()
    assert json.loads(run_cli(home, "cloud", "status", "--json").stdout)["state"] == "NOT-CONFIGURED"
    again = run_cli(home, "cloud", "disconnect")
    assert again.returncode == 0 and "not paired" in again.stdout


def test_the_token_is_stored_only_encrypted_with_its_key_alone_in_cloud_key(tmp_path: Path) -> None:
    """No file of the home holds the token in the clear; db.sqlite and the credentials file travel safely."""
    home = tmp_path / "home"
    token = paired_home(home)
    for path in home.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    hp = ensure_home(home)
    assert load_credentials(hp).token == token
    (home / "cloud.key").unlink()
    with pytest.raises(CloudLinkError, match="cloud.key is missing: run `halton-meter cloud connect`"):
        load_credentials(hp)


def test_a_credentials_file_from_before_keeps_working_and_loses_its_clear_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    token = paired_home(home)
    creds = home / "cloud-credentials.json"
    data = json.loads(creds.read_text())
    creds.write_text(json.dumps({**data, "token": token}))  # the 0.2.0 layout
    creds.chmod(0o600)
    hp = ensure_home(home)
    with Store(home / "db.sqlite") as store:
        saved = (store.get_cloud_state() or {})["api_key_ciphertext"]
        store.set_cloud_state(api_key_ciphertext=None)
    # Without a working encrypted copy the clear one is the only one: used, and left alone.
    assert load_credentials(hp).token == token and "token" in json.loads(creds.read_text())
    with Store(home / "db.sqlite") as store:
        store.set_cloud_state(api_key_ciphertext=saved)
    assert load_credentials(hp).token == token
    assert "token" not in json.loads(creds.read_text()) and creds.stat().st_mode & 0o777 == 0o600
    assert load_credentials(hp).token == token
