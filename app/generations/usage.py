"""What the generations of a period used and cost, per model and tier: for an operator to set
prices against the provider's costs (`gih usage`)."""

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Integer, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Generation, GenerationImage, GenerationStatus


class UsageRow(BaseModel):
    model: str
    tier: str
    generations: int
    succeeded: int
    failed: int
    images_delivered: int
    credits_charged: int  # taken when the generations were accepted
    credits_refunded: int
    credits_net: int
    input_tokens: int  # the provider's, where it reported them
    output_tokens: int


async def usage_by_model_and_tier(session: AsyncSession, *,
                                  since: datetime | None = None) -> list[UsageRow]:
    """Generations created since `since` (all when None), grouped by model and tier."""
    period = [Generation.created_at >= since] if since is not None else []
    totals = await session.execute(
        select(Generation.model, Generation.quality, func.count(),
               func.sum(func.cast(Generation.status == GenerationStatus.SUCCEEDED, Integer)),
               func.sum(func.cast(Generation.status == GenerationStatus.FAILED, Integer)),
               func.coalesce(func.sum(Generation.credits_requested), 0),
               func.coalesce(func.sum(Generation.credits_refunded), 0),
               func.coalesce(func.sum(Generation.input_tokens), 0),
               func.coalesce(func.sum(Generation.output_tokens), 0))
        .where(*period).group_by(Generation.model, Generation.quality)
        .order_by(Generation.model, Generation.quality))
    delivered = dict(((model, tier), count) for model, tier, count in (await session.execute(
        select(Generation.model, Generation.quality, func.count(GenerationImage.id))
        .join(GenerationImage, GenerationImage.generation_id == Generation.id)
        .where(*period).group_by(Generation.model, Generation.quality))).tuples())
    return [UsageRow(model=model, tier=tier, generations=count, succeeded=int(ok or 0),
                     failed=int(failed or 0), images_delivered=delivered.get((model, tier), 0),
                     credits_charged=int(charged), credits_refunded=int(refunded),
                     credits_net=int(charged) - int(refunded), input_tokens=int(tokens_in),
                     output_tokens=int(tokens_out))
            for model, tier, count, ok, failed, charged, refunded, tokens_in, tokens_out
            in totals.tuples()]
