"""Bad input: one line on stderr, a documented exit code, the old map intact."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import POSTMAP, Setup, dovecot_line

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

NOW = ("--now", "2026-12-04T15:00:00")


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """A set-up with one published grant, whose files must survive each error."""
    setup = Setup(tmp_path)
    setup.append(dovecot_line("198.51.100.1", when="Dec  4 14:50:00"))
    setup.popbs("sync", *NOW, check=True)
    assert setup.query("198.51.100.1") is not None
    return setup


def snapshot(setup: Setup) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(setup.map_dir.iterdir())}


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("popbs: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_unknown_option(setup: Setup) -> None:
    done = setup.popbs("sync", "--frobnicate")
    assert done.returncode == 2
    # click may add a suggestion "(Did you mean ...?)" in between.
    assert done.stderr.startswith("popbs: error: No such option '--frobnicate'")
    assert done.stderr.endswith("; see 'popbs sync --help'\n")
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--ttl", "soon"), "bad --ttl"),
        (("--ttl", "999999999999d"), "bad --ttl"),
        (("--now", "yesterday"), "bad --now"),
        (("--now", "nan"), "bad --now"),
        (("--now", "inf"), "bad --now"),
        (("--now", "1e400"), "bad --now"),
        (("--never-grant", "10.0.0.0/33"), "bad --never-grant"),
        (("--map-type", "mysql"), "bad --map-type"),
        (("--config", "/nonexistent/popbs.conf"), "does not exist"),
    ],
    ids=[
        "ttl",
        "huge-ttl",
        "now",
        "nan",
        "inf",
        "huge-now",
        "never-grant",
        "map-type",
        "missing-config",
    ],
)
def test_bad_setting_values(setup: Setup, args: tuple[str, ...], words: str) -> None:
    before = snapshot(setup)
    line = assert_one_line_error(setup.popbs("sync", *args), 2)
    assert words in line
    assert snapshot(setup) == before


def test_unreadable_log(setup: Setup) -> None:
    before = snapshot(setup)
    setup.log.unlink()
    setup.log.mkdir()  # open() fails with EISDIR, even for root
    setup.append(dovecot_line("198.51.100.2"), log=setup.root / "other.log")
    done = setup.popbs("sync", *NOW)
    line = assert_one_line_error(done, 3)
    assert f"cannot read log {setup.log}" in line
    assert snapshot(setup) == before


def test_unreadable_log_with_v_shows_traceback(setup: Setup) -> None:
    setup.log.unlink()
    setup.log.mkdir()
    done = setup.popbs("sync", *NOW, "-v")
    assert done.returncode == 3
    assert "Traceback" in done.stderr


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """A real read-only mount over `directory` (root may still not write)."""
    mounted = subprocess.run(
        ["mount", "--bind", str(directory), str(directory)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_unwritable_map_directory(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:55:00"))
    before = snapshot(setup)
    with read_only(setup.map_dir):
        done = setup.popbs("sync", *NOW)
        line = assert_one_line_error(done, 4)
        assert f"cannot write in {setup.map_dir}" in line
        assert snapshot(setup) == before
        assert setup.query("198.51.100.1") is not None

    # The logins were not lost: the offsets were not saved.
    setup.popbs("sync", *NOW, check=True)
    assert setup.query("198.51.100.2") is not None


def test_map_directory_missing(setup: Setup) -> None:
    done = setup.popbs("sync", *NOW, "--map", str(setup.root / "no" / "popbs"))
    assert "cannot write in" in assert_one_line_error(done, 4)


def test_postmap_missing(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:55:00"))
    before = snapshot(setup)
    done = setup.popbs("sync", *NOW, "--postmap", str(setup.root / "no-postmap"))
    assert "postmap not found" in assert_one_line_error(done, 4)
    assert snapshot(setup) == before


def test_postmap_failing(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:55:00"))
    before = snapshot(setup)
    # The real postmap, failing for real: its MAIL_CONFIG has no main.cf.
    (setup.mail_config / "main.cf").unlink()
    done = setup.popbs("sync", *NOW, "--postmap", str(POSTMAP))
    line = assert_one_line_error(done, 4)
    assert "postmap failed" in line and "main.cf" in line
    assert snapshot(setup) == before


def test_corrupt_grant_file_is_refused_not_overwritten(setup: Setup) -> None:
    setup.map.write_text("# x\n198.51.100.1 1796395800 # hand edit\n")
    done = setup.popbs("sync", *NOW)
    assert "line 2" in assert_one_line_error(done, 4)
    assert setup.map.read_text() == "# x\n198.51.100.1 1796395800 # hand edit\n"


def test_malformed_merge_input_merges_nothing(setup: Setup) -> None:
    before = snapshot(setup)
    done = setup.popbs("merge", *NOW, stdin="198.51.100.5 1796395800\nfoo bar\n")
    assert "stdin, line 2" in assert_one_line_error(done, 3)
    assert snapshot(setup) == before


def test_merge_refuses_never_grant_with_a_warning(setup: Setup) -> None:
    done = setup.popbs(
        "merge",
        *NOW,
        "--never-grant",
        "203.0.113.0/24",
        stdin="127.0.0.5\n203.0.113.9\n198.51.100.5\n",
    )
    assert done.returncode == 0
    assert "not granting 127.0.0.5: loopback" in done.stderr
    assert "not granting 203.0.113.9: in never-grant network" in done.stderr
    keys = [line.split()[0] for line in setup.map.read_text().splitlines()[1:]]
    assert keys == ["198.51.100.1", "198.51.100.5"]


def test_corrupt_state_is_refused_and_kept(setup: Setup) -> None:
    state = setup.state_dir / "state.json"
    state.write_bytes(b"\0\0\0")
    done = setup.popbs("sync", *NOW)
    assert "corrupt" in assert_one_line_error(done, 5)
    assert state.read_bytes() == b"\0\0\0"


def test_state_from_newer_version_is_refused(setup: Setup) -> None:
    state = setup.state_dir / "state.json"
    text = state.read_text().replace('"version": 1', '"version": 99')
    state.write_text(text)
    done = setup.popbs("sync", *NOW)
    assert "newer popbs" in assert_one_line_error(done, 5)
    assert state.read_text() == text


def test_check_bad_address(setup: Setup) -> None:
    done = setup.popbs("check", "not-an-ip")
    assert "not an IP address" in assert_one_line_error(done, 2)


def test_bad_value_from_environment_names_its_source(setup: Setup) -> None:
    env = setup.env() | {"POPBS_TTL": "soon"}
    done = subprocess.run(
        [sys.executable, "-m", "popbs_tools", "list", *setup.settings()],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "bad POPBS_TTL" in assert_one_line_error(done, 2)


def test_config_file_that_is_not_utf8(setup: Setup) -> None:
    config = setup.root / "popbs.conf"
    config.write_bytes(b"\xff[popbs]\n")
    done = setup.popbs("list", "--config", str(config))
    assert "not valid UTF-8" in assert_one_line_error(done, 2)


def test_misspelt_config_section(setup: Setup) -> None:
    config = setup.root / "popbs.conf"
    config.write_text("[pobps]\nttl = 1h\n")
    done = setup.popbs("list", "--config", str(config))
    assert "unknown section [pobps]" in assert_one_line_error(done, 2)


def test_non_ascii_digits_in_grant_file_and_merge_input(setup: Setup) -> None:
    before = snapshot(setup)
    done = setup.popbs("merge", *NOW, stdin="198.51.100.5 \u00b2\n")
    assert_one_line_error(done, 3)
    setup.map.write_text("# x\n198.51.100.5 \u00b2\n")
    assert_one_line_error(setup.popbs("sync", *NOW), 4)
    setup.map.write_bytes(before["popbs"])


@pytest.mark.parametrize("offset", [-1, 1.5, "7"], ids=["negative", "float", "text"])
def test_state_with_a_checksummed_but_impossible_offset(
    setup: Setup, offset: object
) -> None:
    import json

    from popbs_tools import state as state_module

    path = setup.state_dir / "state.json"
    document = json.loads(path.read_text())
    for position in document["logs"].values():
        position["offset"] = offset
    document["checksum"] = state_module.checksum_of(document)
    path.write_text(json.dumps(document))
    assert "corrupt" in assert_one_line_error(setup.popbs("sync", *NOW), 5)


def test_state_version_as_text_is_corrupt_not_newer(setup: Setup) -> None:
    path = setup.state_dir / "state.json"
    path.write_text(path.read_text().replace('"version": 1', '"version": "1"'))
    line = assert_one_line_error(setup.popbs("sync", *NOW), 5)
    assert "corrupt" in line and "newer" not in line


def test_standard_output_full(setup: Setup) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "popbs_tools", "list", *setup.settings(), *NOW],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=setup.env(),
            timeout=60,
        )
    assert "cannot write to standard output" in assert_one_line_error(done, 4)


def test_log_that_is_a_fifo_is_refused_without_hanging(setup: Setup) -> None:
    fifo = setup.root / "fifo.log"
    os.mkfifo(fifo)
    done = setup.popbs("sync", *NOW, "--log", str(fifo))
    assert "not a regular file" in assert_one_line_error(done, 3)


def test_bare_popbs_prints_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "popbs_tools"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("Usage: popbs")
    assert done.stderr == ""


def test_world_writable_state_parent_without_sticky_bit_is_refused(
    setup: Setup,
) -> None:
    shared = setup.root / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    done = setup.popbs("sync", *NOW, "--state-dir", str(shared / "state"))
    line = assert_one_line_error(done, 5)
    assert "writable by everyone and not sticky" in line
    shared.chmod(0o1777)  # with the sticky bit, as /tmp has
    assert (
        setup.popbs("sync", *NOW, "--state-dir", str(shared / "state")).returncode == 0
    )


def test_map_path_that_is_another_users_symlink_is_refused(setup: Setup) -> None:
    import pwd

    before = snapshot(setup)
    link = setup.map_dir / "popbs-link"
    link.symlink_to(setup.root / "elsewhere")
    nobody = pwd.getpwnam("nobody").pw_uid
    os.lchown(link, nobody, -1)
    done = setup.popbs("sync", *NOW, "--map", str(link))
    assert "symbolic link owned by uid" in assert_one_line_error(done, 4)
    assert not (setup.root / "elsewhere").exists()
    after = {
        p.name: p.read_bytes()
        for p in sorted(setup.map_dir.iterdir())
        if not p.is_symlink()
    }
    assert after == before
