"""Settings: defaults, a TOML config file, and KVMNETD_* variables that win over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import load_settings


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('listen = "127.0.0.1:9999"\nstate_dir = "/srv/k"\nreconcile_interval = 5\n')
    monkeypatch.setenv("KVMNETD_RECONCILE_INTERVAL", "7.5")
    monkeypatch.setenv("KVMNETD_NETNS", "")
    settings = load_settings(config)
    assert settings.listen_address == ("127.0.0.1", 9999)
    assert settings.reconcile_interval == 7.5  # the environment wins
    assert settings.state_dir == Path("/srv/k")
    assert settings.db_url == "sqlite:////srv/k/kvmnetd.db"
    assert settings.admin_token_file == Path("/srv/k/admin-token")
    assert settings.netns is None


def test_empty_listen_disables_tcp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KVMNETD_LISTEN", "")
    monkeypatch.setenv("KVMNETD_RUN_DIR", str(tmp_path))
    settings = load_settings(None)
    assert settings.listen_address is None
    assert settings.socket_path == tmp_path / "kvmnetd.sock"


def test_missing_config_file_and_unknown_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('lisen = "typo"\n')
    with pytest.raises(ValueError, match="lisen"):
        load_settings(bad)
