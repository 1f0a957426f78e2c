"""Publishing through the real postmap: atomic, only when changed, checked."""

import os
from pathlib import Path

import pytest

from popbs_tools import grants, publish

from helpers import POSTMAP, Setup

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")


@pytest.fixture(params=["hash", "btree", "lmdb", "cdb"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    return Setup(tmp_path, map_type=request.param)


def test_map_answers_what_the_grant_file_says(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_CONFIG", str(setup.mail_config))
    data = grants.render({"198.51.100.7": 1796395211, "2001:db8::7": 1796395212})
    assert POSTMAP is not None
    publish.publish(setup.map, data, setup.map_type, Path(POSTMAP))

    assert setup.map.read_bytes() == data
    assert setup.query("198.51.100.7") == "1796395211"
    assert setup.query("2001:db8::7") == "1796395212"
    assert setup.query("198.51.100.8") is None
    assert publish.is_current(setup.map, setup.map_type)
    assert oct(setup.db.stat().st_mode & 0o777) == "0o644"
    assert oct(setup.map.stat().st_mode & 0o777) == "0o644"
    # No temp file is left behind.
    assert sorted(p.name for p in setup.map_dir.iterdir()) == sorted(
        {setup.map.name, setup.db.name}
    )


def test_live_map_is_replaced_not_rewritten(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_CONFIG", str(setup.mail_config))
    assert POSTMAP is not None
    publish.publish(
        setup.map, grants.render({"198.51.100.7": 1}), setup.map_type, Path(POSTMAP)
    )
    # A reader that opened the old map keeps a complete old map: the new one
    # arrives under a new inode by rename.
    with open(setup.db, "rb") as old_map:
        old_inode = os.fstat(old_map.fileno()).st_ino
        old_bytes = old_map.read()
        publish.publish(
            setup.map, grants.render({"198.51.100.8": 2}), setup.map_type, Path(POSTMAP)
        )
        old_map.seek(0)
        assert old_map.read() == old_bytes
    assert setup.db.stat().st_ino != old_inode
    assert setup.query("198.51.100.8") == "2"
    assert setup.query("198.51.100.7") is None


def test_stale_map_is_detected(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_CONFIG", str(setup.mail_config))
    assert not publish.is_current(setup.map, setup.map_type)
    assert POSTMAP is not None
    publish.publish(setup.map, grants.render({}), setup.map_type, Path(POSTMAP))
    assert publish.is_current(setup.map, setup.map_type)

    # The grant file edited after the map was built: the map is stale.
    future = setup.db.stat().st_mtime_ns + 10**9
    os.utime(setup.map, ns=(future, future))
    assert not publish.is_current(setup.map, setup.map_type)


def test_temp_files_of_a_killed_run_are_removed(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_CONFIG", str(setup.mail_config))
    old = [setup.map_dir / ".popbs.abc123_x", setup.map_dir / ".popbs.abc123_x.db"]
    young = setup.map_dir / ".popbs.young123"
    unrelated = setup.map_dir / ".popbs.keep"
    for path in (*old, young, unrelated):
        path.write_bytes(b"")
    for path in (*old, unrelated):
        os.utime(path, (1, 1))
    assert POSTMAP is not None
    publish.publish(setup.map, grants.render({}), setup.map_type, Path(POSTMAP))
    assert not any(path.exists() for path in old)
    assert young.exists() and unrelated.exists()
