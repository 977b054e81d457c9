"""The usual submit on PostgreSQL in one round trip: the generation's row written by the charge's
database function (`app.credits.one_statement`), outside any transaction. Usual: no
Idempotency-Key, no SDK retry to match, no reference images, and no key limit to reserve (each
of those reads or writes more: `service.accept` does them in a transaction). Through the ORM's
flush and the transaction's round trips this was a third of the API's CPU per submit
(docs/performance.md).
"""

from datetime import datetime

from app.credits import one_statement
from app.generations import service
from app.generations.request import GenerationInput
from app.keys.service import Principal
from app.limits import service as limits
from app.models import Generation
from app.runtime import Runtime

COLUMNS = list(Generation.__table__.columns)


def row_of(generation: Generation) -> dict[str, object]:
    """Every column of the generation by name, for json_populate_record: the model's values,
    its columns' defaults where unset (set on the model too, as a flush would), enums as their
    values, datetimes in ISO 8601."""
    row: dict[str, object] = {}
    for column in COLUMNS:
        value = getattr(generation, column.key)
        if value is None and column.default is not None and column.default.is_scalar:
            value = column.default.arg  # type: ignore[attr-defined]
            setattr(generation, column.key, value)
        if isinstance(value, datetime):
            value = value.isoformat()
        row[column.name] = getattr(value, "value", value)
    return row


def applies(rt: Runtime, principal: Principal, *, idempotency_key: str | None,
            sdk_retry: bool, reference_count: int) -> bool:
    return (not rt.settings.is_sqlite and not idempotency_key and not sdk_retry
            and reference_count == 0 and limits.reserves_nothing(principal, rt.settings))


async def accept(rt: Runtime, principal: Principal, wanted: GenerationInput, *,
                 generation_id: str, fingerprint: str) -> service.Accepted | None:
    """The generation written and charged (InsufficientCredits: nothing written), or None when
    the charge needs the transaction's path (nothing written)."""
    generation = service.new_generation(principal, wanted, generation_id=generation_id,
                                        reference_count=0, fingerprint=fingerprint,
                                        idempotency_key=None)
    async with rt.reader() as session:  # autocommit: no BEGIN, no COMMIT
        connection = (await (await session.connection()).get_raw_connection()).driver_connection
        balance = await one_statement.charge_generation(
            connection, row_of(generation), wanted.credits_requested,
            note=service.charge_note(wanted), now=generation.created_at)
    if balance is None:
        return None
    return service.Accepted(generation, created=True, balance=balance)
