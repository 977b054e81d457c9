"""Reading console form fields: whole numbers, dates and choices, with messages a person can act
on (FormProblem)."""

from datetime import UTC, datetime, timedelta

from starlette.datastructures import FormData

from app.db import utcnow

LIMIT = 1_000_000_000


class FormProblem(ValueError):
    """A field the form cannot take; the message names it."""


def text(form: FormData, name: str, *, max_length: int = 200) -> str | None:
    value = form.get(name)
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    if len(value) > max_length or "\x00" in value:
        raise FormProblem(f"{name.replace('_', ' ').capitalize()} is too long (at most "
                          f"{max_length} characters).")
    return value


def whole_number(form: FormData, name: str, label: str, *, minimum: int = 0,
                 maximum: int = LIMIT) -> int | None:
    value = text(form, name, max_length=20)
    if value is None:
        return None
    digits = value.replace(",", "").replace("_", "")
    if not (digits.isascii() and digits.isdigit()) or not minimum <= int(digits) <= maximum:
        raise FormProblem(f"{label} must be a whole number from {minimum:,} to {maximum:,}.")
    return int(digits)


def choice(form: FormData, name: str, label: str, allowed: list[str]) -> str | None:
    value = text(form, name, max_length=40)
    if value is not None and value not in allowed:
        raise FormProblem(f"Choose a {label.lower()} from the list.")
    return value


def expiry_in_days(form: FormData, name: str = "expires_in_days") -> datetime | None:
    days = whole_number(form, name, "Expiry", minimum=1, maximum=36_500)
    return utcnow() + timedelta(days=days) if days else None


def future_date(form: FormData, name: str, label: str) -> datetime | None:
    """A date (YYYY-MM-DD, the end of that day in UTC) or a date-time, in the future."""
    value = text(form, name, max_length=40)
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise FormProblem(f"{label} must be a date such as 2027-01-31.") from None
    if len(value) == 10:  # a date: valid through that day
        when = when + timedelta(days=1)
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when <= utcnow():
        raise FormProblem(f"{label} must be in the future.")
    return when
