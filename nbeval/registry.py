"""Plugin discovery through entry points (group `nbeval.suites`), with "did you mean" errors.

Hydra's `_target_` builds what a config names; a suite from another package that ships no config
can still be run by name (`+suite.<name>={}`): its class is found here.
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points

SUITES_GROUP = "nbeval.suites"


def available(group: str = SUITES_GROUP) -> dict[str, str]:
    """name → "module:Class" of every registered plugin (nothing is imported)."""
    return {ep.name: ep.value for ep in entry_points(group=group)}


def load(name: str, group: str = SUITES_GROUP) -> type:
    eps = {ep.name: ep for ep in entry_points(group=group)}
    if name not in eps:
        close = difflib.get_close_matches(name, eps, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; registered: {', '.join(sorted(eps)) or 'none'}"
        raise KeyError(f"no {group} plugin named {name!r}{hint}")
    return eps[name].load()
