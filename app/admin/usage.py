"""What the generations of a period cost and how they went, per day and per model (UTC days):
for the admin API and the console's Usage page. One grouped query."""

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Float, Integer, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from app.models import Generation, GenerationStatus


@dataclass
class Figures:
    """Generations and credits of one group (a day, a model, a day and model, or all)."""

    generations: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    credits_charged: int = 0  # taken when the generations were accepted
    credits_refunded: int = 0
    latency_total_s: float = 0.0  # over succeeded generations whose times are known
    latency_count: int = 0

    @property
    def credits_net(self) -> int:
        return self.credits_charged - self.credits_refunded

    @property
    def failure_rate(self) -> float:
        """Failed among those that ended succeeded or failed (0 when none did)."""
        ended = self.succeeded + self.failed
        return round(self.failed / ended, 4) if ended else 0.0

    @property
    def avg_latency_s(self) -> float | None:
        return round(self.latency_total_s / self.latency_count, 3) if self.latency_count \
            else None

    def add(self, other: "Figures") -> None:
        for name in ("generations", "succeeded", "failed", "canceled", "credits_charged",
                     "credits_refunded", "latency_total_s", "latency_count"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Usage:
    rows: list[tuple[str, str, Figures]]  # (day, model, figures), by day then model
    by_day: dict[str, Figures] = field(default_factory=dict)
    by_model: dict[str, Figures] = field(default_factory=dict)
    total: Figures = field(default_factory=Figures)


def _day(dialect: str) -> ColumnElement[str]:
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", Generation.created_at), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", Generation.created_at)


def _latency_s(dialect: str) -> ColumnElement[float]:
    """Seconds from the job's start to the end of a succeeded generation: the provider's time,
    and storing its images."""
    if dialect == "postgresql":
        seconds: ColumnElement[float] = cast(func.extract(
            "epoch", Generation.completed_at - Generation.started_at), Float)
    else:
        seconds = (func.julianday(Generation.completed_at)
                   - func.julianday(Generation.started_at)) * 86400.0
    timed = (Generation.status == GenerationStatus.SUCCEEDED) & \
        Generation.started_at.is_not(None) & Generation.completed_at.is_not(None)
    return case((timed, cast(seconds, Float)), else_=None)


def _count(status: GenerationStatus) -> ColumnElement[int]:
    return func.sum(cast(Generation.status == status, Integer))


async def usage(session: AsyncSession, *, since: datetime, until: datetime) -> Usage:
    """Generations created in [since, until), per (day, model), per day, per model, in all."""
    dialect = session.get_bind().dialect.name
    day = _day(dialect).label("day")
    latency = _latency_s(dialect)
    result = await session.execute(
        select(day, Generation.model, func.count(),
               _count(GenerationStatus.SUCCEEDED), _count(GenerationStatus.FAILED),
               _count(GenerationStatus.CANCELED),
               func.coalesce(func.sum(Generation.credits_requested), 0),
               func.coalesce(func.sum(Generation.credits_refunded), 0),
               func.coalesce(func.sum(latency), 0.0), func.count(latency))
        .where(Generation.created_at >= since, Generation.created_at < until)
        .group_by(day, Generation.model).order_by(day, Generation.model))
    found = Usage(rows=[])
    for (day_, model, count, ok, failed, canceled, charged, refunded, latency_total,
         latency_count) in result.tuples():
        figures = Figures(int(count), int(ok or 0), int(failed or 0), int(canceled or 0),
                          int(charged), int(refunded), float(latency_total or 0.0),
                          int(latency_count or 0))
        found.rows.append((str(day_), model, figures))
        found.by_day.setdefault(str(day_), Figures()).add(figures)
        found.by_model.setdefault(model, Figures()).add(figures)
        found.total.add(figures)
    return found
