"""`popbs sync --dry-run`: what a sync would change, with nothing written.

No lock is taken (creating the lock file would be a write), no state saved or
repaired, no grant file, map or postmap run. Reading does not need the lock:
the state and the grant file are only ever replaced whole, by rename.
"""

import logging
from dataclasses import dataclass

from popbs_tools import jobs, manual, mtas, state
from popbs_tools.grants import Grants
from popbs_tools.scan import Found
from popbs_tools.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preview:
    change: jobs.Change
    # The map would be rebuilt even with the same grants: it is missing or
    # older than the grant file.
    rebuild: bool

    @property
    def changes_map(self) -> bool:
        change = self.change
        return bool(change.added or change.removed or change.refreshed) or (
            self.rebuild
        )

    def lines(self) -> list[str]:
        """`+ IP` added, `- IP` pruned, `~ IP` granted on with a new time."""
        change = self.change
        return (
            [f"+ {key}" for key in change.added]
            + [f"- {key}" for key in change.removed]
            + [f"~ {key}" for key in change.refreshed]
        )


def dry_run(settings: Settings, reset: bool = False) -> Preview:
    """The change `popbs sync` would make now; writes nothing.

    The whole backlog counts as read in one run: --max-read and checkpoints
    do not apply, so the preview shows where the runs would end up.
    """
    saved = state.load(settings.state_dir, repair=False)
    if reset:
        # As state.reset: only the hand grants and revocations are kept.
        saved = state.State(manual=saved.manual, revoked=saved.revoked)
    reader = jobs.interpreter(settings)
    found, current = jobs.scan_logs(settings, reader, saved, False)

    latest: Grants = {}
    began: dict[str, float] = {}
    for item in found:
        if not isinstance(item, Found):
            continue
        latest[item.ip] = max(item.time, latest.get(item.ip, -1))
        start = item.time if item.since is None else item.since
        began[item.ip] = max(start, began.get(item.ip, -1))

    # Queued grants and revocations, as the sync would apply them.
    requests = manual.queued(settings.state_dir, set_aside=False)
    fresh = manual.apply(requests, current, settings.policy)
    old_data, new_data, change = jobs.planned(
        settings, jobs.sync_edit(settings, reader, current, latest, began, fresh)
    )
    rebuild = False
    if new_data == old_data:
        rebuild = not mtas.is_current(settings)
        if rebuild:
            log.warning(
                "the map of %s would be rebuilt: it is missing or older than "
                "the grant file",
                settings.map_path,
            )
    return Preview(change, rebuild)
