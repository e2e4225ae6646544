"""Text columns whose values must come from a fixed set, checked by column name."""

from __future__ import annotations

from dataclasses import dataclass

from subscription_export.core.currencies import ISO_4217
from subscription_export.core.timezones import IANA_ZONES
from subscription_export.core.values import BadValue, shown


@dataclass(frozen=True)
class Domain:
    values: frozenset[str]
    what: str  # completes "'X' is not …"


DOMAINS: dict[str, Domain] = {
    "currency": Domain(ISO_4217, "an ISO 4217 currency code"),
    "timezone": Domain(IANA_ZONES, "an IANA time zone"),
}


def check_domain(column: str, value: object) -> None:
    """Raise BadValue if `column` has a domain and `value` (not None) is outside it."""
    domain = DOMAINS.get(column)
    if domain is not None and value is not None and value not in domain.values:
        raise BadValue(f"{shown(value)} is not {domain.what}")
