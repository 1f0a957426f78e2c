"""The man pages keep up with the commands, options and settings.

How to add a page for a new command CMD (or a subcommand: popbs-GROUP-CMD.8):

1. Copy man/popbs-list.8 to man/popbs-CMD.8 and rewrite it. Keep the
   sections NAME, SYNOPSIS, DESCRIPTION, OPTIONS, EXIT STATUS, EXAMPLES and
   SEE ALSO (see SECTIONS below); NAME starts with `popbs\\-CMD`.
2. Mention each of the command's own options by its long name, written the
   roff way (`.B \\-\\-dry\\-run`), and its arguments by their metavar
   (ADDRESS, FILE, ...).
3. Add `.BR popbs\\-CMD (8),` to SEE ALSO in man/popbs.8, and a short entry
   under COMMANDS there.
4. A new setting (a key of settings.KEYS, an option added to
   cli._setting_options) gets its entry in man/popbs.conf.5, under SETTINGS:
   `.TP`, `.B key`, then its option, `POPBS_KEY` and `Default ...`.
5. Run `.venv/bin/python -m pytest tests/test_man.py`: every failure names
   the page and what it lacks.

What is checked, and one decision:

- Every command of the click group in popbs_tools/cli.py has a page, and
  every page popbs-*.8 has a command.
- Every option of a command, by its long names (its short name when it has
  no long one), and every argument are mentioned in the command's page.
- The common settings, the options that cli._setting_options adds to every
  command, may instead be described once, in popbs.conf(5): an option of
  that decorator counts as mentioned in a command's page when the page
  itself names it, or when the page refers to popbs.conf(5) and
  popbs.conf.5 names it. Listing twenty settings in every page would only
  make them drift apart.
- Every key of settings.KEYS has an entry in popbs.conf.5 that gives its
  option, its POPBS_ variable and its default; the [rule NAME] keys are
  there too.
- Every page renders with `man --warnings` without a single warning, at 80
  and at 60 columns, in UTF-8.
- Every popbs page a page refers to (SEE ALSO and elsewhere) exists.
"""

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from popbs_tools import cli, settings

MAN = Path(__file__).resolve().parent.parent / "man"
CONF_PAGE = MAN / "popbs.conf.5"
OVERVIEW = MAN / "popbs.8"
SECTIONS = (
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "OPTIONS",
    "EXIT STATUS",
    "EXAMPLES",
    "SEE ALSO",
)


def _commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


COMMANDS = dict(_commands(cli.popbs))


def _page(path: tuple[str, ...]) -> Path:
    return MAN / f"popbs-{'-'.join(path)}.8"


def _text(page: Path) -> str:
    """The page's source with roff's escapes taken out: `\\-\\-map` is `--map`."""
    source = page.read_text(encoding="utf-8")
    source = re.sub(r"\\f(\[[^]]*\]|\(..|.)", "", source)  # font changes
    source = source.replace("\\-", "-").replace("\\&", "").replace("\\e", "\\")
    return source


def _mentions(text: str, word: str) -> bool:
    # Whole words only: --map must not be found inside --map-type.
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def _refers_to(text: str, name: str, section: str) -> bool:
    # `.BR popbs.conf (5)` and `popbs.conf(5)` both refer to the page.
    return re.search(rf"{re.escape(name)}\s*\({section}\)", text) is not None


def _names(option: click.Parameter) -> list[str]:
    """How a page must name an option: its long forms, else its short one."""
    every = [*option.opts, *option.secondary_opts]
    long = [name for name in every if name.startswith("--")]
    return long or every


def _common_options() -> list[click.Option]:
    """The options every command gets from cli._setting_options."""
    probe = click.command()(cli._setting_options(lambda **_: None))
    return [param for param in probe.params if isinstance(param, click.Option)]


COMMON = {name for option in _common_options() for name in _names(option)}


def _argument_word(argument: click.Argument) -> str:
    """The word a page uses for an argument: its metavar's first, or its name."""
    metavar = argument.metavar or (argument.name or "").upper()
    return re.findall(r"[A-Za-z][\w-]*", metavar)[0]


def _sections(text: str) -> list[str]:
    return [
        heading.strip().strip('"')
        for heading in re.findall(r"^\.SH\s+(.+)$", text, flags=re.M)
    ]


def _entry(text: str, section: str, key: str) -> str | None:
    """The text of the `.TP` entry `key` in `section` (`.TP` / `.B key` / ...)."""
    start = text.find(f"\n.SH {section}\n")
    if start < 0:
        return None
    end = text.find("\n.SH ", start + 1)
    body = text[start : end if end > 0 else None]
    for item in re.split(r"^\.TP\b.*$", body, flags=re.M)[1:]:
        lines = item.strip().splitlines()
        if lines and re.fullmatch(rf"\.BI?\s+{re.escape(key)}\b.*", lines[0]):
            return item
    return None


ids = ["-".join(path) for path in COMMANDS]
cases = pytest.mark.parametrize("path", list(COMMANDS), ids=ids)


@cases
def test_each_command_has_a_page(path: tuple[str, ...]) -> None:
    page = _page(path)
    assert page.is_file(), (
        f"`popbs {' '.join(path)}` has no man page: write man/{page.name} "
        "(see the top of tests/test_man.py)"
    )


@cases
def test_each_page_has_the_sections_of_a_command_page(path: tuple[str, ...]) -> None:
    page = _page(path)
    if not page.is_file():
        pytest.skip(f"{page.name} is missing (test_each_command_has_a_page)")
    text = _text(page)

    missing = [name for name in SECTIONS if name not in _sections(text)]
    assert not missing, f"{page.name} lacks the section(s) {', '.join(missing)}"

    name_line = text.split("\n.SH NAME\n", 1)[1].splitlines()[0]
    expected = f"popbs-{'-'.join(path)} -"
    assert name_line.startswith(expected), (
        f"{page.name}: NAME must start with {expected!r}, found {name_line!r}"
    )


@cases
def test_each_page_mentions_every_option_and_argument(path: tuple[str, ...]) -> None:
    command = COMMANDS[path]
    page = _page(path)
    if not page.is_file():
        pytest.skip(f"{page.name} is missing (test_each_command_has_a_page)")
    text = _text(page)
    conf = _text(CONF_PAGE)
    defers = _refers_to(text, "popbs.conf", "5")

    missing = []
    for param in command.params:
        if isinstance(param, click.Argument):
            word = _argument_word(param)
            if not _mentions(text, word):
                missing.append(f"argument {word}")
            continue
        for name in _names(param):
            if _mentions(text, name):
                continue
            if name in COMMON and defers and _mentions(conf, name):
                continue
            if name in COMMON and not defers:
                missing.append(f"{name} (or a reference to popbs.conf(5))")
            elif name in COMMON:
                missing.append(f"{name} (in popbs.conf.5)")
            else:
                missing.append(name)
    assert not missing, (
        f"`popbs {' '.join(path)}` has options or arguments that "
        f"{page.name} does not mention: {', '.join(missing)}"
    )


def test_each_page_has_a_command() -> None:
    pages = {f"popbs-{'-'.join(path)}.8" for path in COMMANDS}
    stale = sorted(p.name for p in MAN.glob("popbs-*.8") if p.name not in pages)
    assert not stale, f"pages without a command in popbs_tools/cli.py: {stale}"


def test_the_overview_refers_to_every_command_page() -> None:
    text = _text(OVERVIEW)

    missing = [
        f"popbs-{'-'.join(path)}(8)"
        for path in COMMANDS
        if not _refers_to(text, f"popbs-{'-'.join(path)}", "8")
    ]
    assert not missing, f"popbs.8 does not refer to {', '.join(missing)}"

    group_options = [
        name
        for param in cli.popbs.params
        if isinstance(param, click.Option)
        for name in _names(param)
    ]
    unnamed = [name for name in group_options if not _mentions(text, name)]
    assert not unnamed, f"popbs.8 does not mention popbs's own {unnamed}"


def test_every_common_option_is_in_popbs_conf_5() -> None:
    conf = _text(CONF_PAGE)

    missing = sorted(name for name in COMMON if not _mentions(conf, name))
    assert not missing, f"popbs.conf.5 does not mention the common {missing}"


def _option_of(key: str) -> str:
    for option in _common_options():
        if option.name == key:
            return _names(option)[0]
    raise AssertionError(f"settings.KEYS has {key!r}, but no option sets it")


@pytest.mark.parametrize("key", settings.KEYS)
def test_every_setting_has_an_entry_in_popbs_conf_5(key: str) -> None:
    entry = _entry(_text(CONF_PAGE), "SETTINGS", key)
    assert entry is not None, (
        f"popbs.conf.5 has no entry `.TP` / `.B {key}` under SETTINGS"
    )

    wanted = [_option_of(key), f"POPBS_{key.upper()}", "Default"]
    missing = [word for word in wanted if word not in entry]
    assert not missing, f"popbs.conf.5, setting {key}: does not give {missing}"


def test_popbs_conf_5_describes_rules_and_the_config_variable() -> None:
    conf = _text(CONF_PAGE)

    wanted = [*settings.RULE_KEYS, "POPBS_CONFIG", f"[{settings.RULE_PREFIX}"]
    missing = [word for word in wanted if word not in conf]
    assert not missing, f"popbs.conf.5 does not mention {missing}"
    for key in settings.RULE_KEYS:
        assert _entry(conf, "RULES", key), f"popbs.conf.5: no entry for rule key {key}"


PAGES = sorted(MAN.glob("*.[1-9]"))


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")
@pytest.mark.parametrize("width", ["80", "60"])
@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_each_page_renders_without_a_warning(page: Path, width: str) -> None:
    # 80 columns is man's width off a terminal; 60 a narrow terminal window.
    env = {**os.environ, "MANWIDTH": width, "LC_ALL": "C.UTF-8", "MANPAGER": "cat"}
    done = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", str(page)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), f"{page.name} rendered as nothing"
    assert not done.stderr, (
        f"{page.name} renders with warnings at {width} columns:\n{done.stderr}"
    )


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_each_popbs_page_referred_to_exists(page: Path) -> None:
    text = _text(page)

    named = set(re.findall(r"\b(popbs(?:[-.][\w.-]*?)?)\s*\(([1-9])\)", text))
    missing = sorted(
        f"{name}({section})"
        for name, section in named
        if not (MAN / f"{name}.{section}").is_file()
    )
    assert not missing, f"{page.name} refers to pages that do not exist: {missing}"
