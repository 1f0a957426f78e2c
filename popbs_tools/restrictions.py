"""Where popbs's check stands in a Postfix restriction list.

smtpd evaluates a list left to right and the first permit or reject wins, so
`check_client_access TYPE:MAP` must come before the restriction that refuses
relaying (reject_unauth_destination). Supported: the list as postconf expands
it ($names resolved), and restriction classes named in the list itself
(smtpd_restriction_classes), to any depth. Not followed: a class that an
access table returns as its result, or a policy service's answer.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

# What refuses a client that is not allowed to relay.
UNAUTH = ("reject_unauth_destination", "defer_unauth_destination")
# After these nothing else in the list is ever reached.
FINAL = ("reject", "defer")
CHECK = "check_client_access"
# smtpd gives up on classes nested deeper than this; so do we.
MAX_DEPTH = 20


def tokens(value: str) -> list[str]:
    return [token for token in re.split(r"[\s,]+", value) if token]


def expand(
    items: list[str], classes: Mapping[str, list[str]], depth: int = 0
) -> list[str]:
    """The list with each restriction class name replaced by its own list."""
    if depth > MAX_DEPTH:
        return items
    flat: list[str] = []
    for item in items:
        if item in classes:
            flat += expand(classes[item], classes, depth + 1)
        else:
            flat.append(item)
    return flat


def table(map_type: str, path: str) -> str:
    """How main.cf names the map popbs builds."""
    # A plain grant file (map type none) can only be read as texthash.
    return f"{'texthash' if map_type == 'none' else map_type}:{path}"


def _split_table(reference: str) -> tuple[str, str]:
    kind, _, path = reference.partition(":")
    if kind == "proxy":  # proxy:hash:/path reads the same table
        kind, _, path = path.partition(":")
    return kind, os.path.normpath(path)


@dataclass(frozen=True)
class Verdict:
    problem: str | None  # None: popbs's check is reached before the refusal
    barrier: str | None  # the restriction that refuses relaying, if any


def judge(items: list[str], wanted: str, barriers: tuple[str, ...]) -> Verdict:
    """Whether check_client_access `wanted` comes before the first barrier."""
    kind, path = _split_table(wanted)
    stop = next((i for i, item in enumerate(items) if item in barriers), None)
    barrier = items[stop] if stop is not None else None
    ours, other_kind = None, None
    for index, item in enumerate(items[:-1]):
        if item != CHECK:
            continue
        found_kind, found_path = _split_table(items[index + 1])
        if found_path != path:
            continue
        if found_kind != kind:
            other_kind = other_kind or items[index + 1]
            continue
        if ours is None:
            ours = index
    if ours is not None and (stop is None or ours < stop):
        return Verdict(None, barrier)
    if ours is not None:
        return Verdict(f"has {CHECK} {wanted} after {barrier}, too late", barrier)
    if other_kind is not None:
        return Verdict(f"has {CHECK} {other_kind}, but popbs builds {wanted}", barrier)
    return Verdict(f"has no {CHECK} {wanted}", barrier)


def corrected(
    raw: str, wanted: str, barriers: tuple[str, ...], compact: bool = False
) -> str | None:
    """`raw` with the check put right before its barrier; None if it has none.

    Works on the list as written (unexpanded), so that $names and class
    names survive; a barrier hidden in one of those cannot be placed.
    `compact` joins with commas alone, as a master.cf -o value must be.
    """
    items = tokens(raw)
    kept: list[str] = []
    skip = False
    _, path = _split_table(wanted)
    for index, item in enumerate(items):
        if skip:
            skip = False
            continue
        following = items[index + 1] if index + 1 < len(items) else ""
        if item == CHECK and _split_table(following)[1] == path:
            skip = True  # a misplaced or mistyped check of ours: moved
            continue
        kept.append(item)
    stop = next((i for i, item in enumerate(kept) if item in barriers), None)
    if stop is None:
        return None
    if compact:
        return ",".join([*kept[:stop], CHECK, wanted, *kept[stop:]])
    return ", ".join([*kept[:stop], f"{CHECK} {wanted}", *kept[stop:]])
