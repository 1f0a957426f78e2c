"""Settings: option, then POPBS_<NAME>, then the config file, then the default."""

from pathlib import Path

import pytest

from popbs_tools.errors import SettingsError
from popbs_tools.settings import resolve


def write_config(tmp_path: Path, body: str) -> str:
    path = tmp_path / "popbs.conf"
    path.write_text("[popbs]\n" + body)
    return str(path)


def test_precedence(tmp_path: Path) -> None:
    config = write_config(tmp_path, "ttl = 1h\nmap = /from/config\nstate_dir = /s\n")
    env = {"POPBS_CONFIG": config, "POPBS_TTL": "2h", "POPBS_MAP": "/from/env"}
    settings = resolve({"map": "/from/option"}, env, clock=0)
    assert settings.map_path == Path("/from/option")
    assert settings.ttl == 7200
    assert settings.state_dir == Path("/s")


def test_lists_from_env_and_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, "log = /a.log /b.log\nnever-grant = 10.0.0.0/8,\n")
    settings = resolve({"config": config}, {}, clock=0)
    assert settings.logs == (Path("/a.log"), Path("/b.log"))
    assert settings.policy.refusal("10.1.2.3") is not None
    assert settings.policy.refusal("127.0.0.2") is not None

    settings = resolve({"config": config}, {"POPBS_LOG": "/c.log"}, clock=0)
    assert settings.logs == (Path("/c.log"),)


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("popbs_tools.settings.DEFAULT_CONFIG", tmp_path / "none.conf")
    settings = resolve({}, {}, clock=123.0)
    assert settings.map_path == Path("/etc/postfix/popbs")
    assert settings.state_dir == Path("/var/lib/popbs")
    assert settings.ttl == 1800
    assert settings.now == 123.0
    assert settings.logs[0] in (Path("/var/log/mail.log"), Path("/var/log/maillog"))


def test_unknown_config_key_is_an_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "tll = 30m\n")
    with pytest.raises(SettingsError, match="unknown key 'tll'"):
        resolve({"config": config}, {}, clock=0)


def test_postmap_comes_from_postconf_command_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from popbs_tools import postfix

    (tmp_path / "main.cf").write_text("command_directory = /opt/pf/sbin\n")
    monkeypatch.setenv("MAIL_CONFIG", str(tmp_path))
    postfix.postconf.cache_clear()
    try:
        settings = resolve({"map_type": "hash"}, {}, clock=0)
        assert settings.postmap == Path("/opt/pf/sbin/postmap")
    finally:
        postfix.postconf.cache_clear()
