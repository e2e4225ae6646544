"""IANA time zone names (the `timezone` column must be one of them).

Read from the pinned `tzdata` package, not the machine's zoneinfo directory: which names are
valid decides which rows are quarantined, so it must not change with the host (invariant 2).
"""

from importlib.resources import files

IANA_ZONES = frozenset(files("tzdata").joinpath("zones").read_text(encoding="utf-8").split())
