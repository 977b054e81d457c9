"""The periods of a key's credit limit, in UTC: a day from 00:00, a week from Monday 00:00, a
month from the 1st; `never` is one period for ever (it starts at the epoch)."""

from datetime import UTC, datetime, timedelta

from app.models import LimitReset

FOREVER = datetime(1970, 1, 1, tzinfo=UTC)


def period_start(reset: LimitReset | None, now: datetime) -> datetime:
    """The start of the period `now` falls in (None: `never`)."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == LimitReset.DAILY:
        return day
    if reset == LimitReset.WEEKLY:
        return day - timedelta(days=day.weekday())
    if reset == LimitReset.MONTHLY:
        return day.replace(day=1)
    return FOREVER


def period_end(reset: LimitReset | None, now: datetime) -> datetime | None:
    """When the period `now` falls in ends and the allowance starts afresh (None: never)."""
    start = period_start(reset, now)
    if reset == LimitReset.DAILY:
        return start + timedelta(days=1)
    if reset == LimitReset.WEEKLY:
        return start + timedelta(days=7)
    if reset == LimitReset.MONTHLY:
        return (start.replace(year=start.year + 1, month=1) if start.month == 12
                else start.replace(month=start.month + 1))
    return None
