"""The Prefer header (RFC 7240) of POST /api/v1/images/generations: `respond-async` acts as
`async: true`; `wait=N` makes a sync request wait at most N seconds (never more than
GIH_SYNC_TIMEOUT_S) before its 202. What was applied is echoed in Preference-Applied."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Preferences:
    respond_async: bool = False
    wait_s: int | None = None


def parse(values: list[str]) -> Preferences:
    """Every Prefer header, comma-separated preferences each; names are case-insensitive,
    unknown ones (and malformed values) are ignored, as the RFC asks."""
    respond_async, wait_s = False, None
    for value in values:
        for preference in value.split(","):
            token = preference.split(";", 1)[0].strip()
            name, _, argument = token.partition("=")
            name, argument = name.strip().lower(), argument.strip().strip('"')
            if name == "respond-async" and not argument:
                respond_async = True
            elif name == "wait" and argument.isascii() and argument.isdigit() and wait_s is None:
                wait_s = int(argument[:9])
    return Preferences(respond_async, wait_s)
