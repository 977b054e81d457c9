"""`gih usage`: generations, images, credits and provider tokens per model and tier."""

from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from app.cli.common import JsonOpt, emit, parse_when, run_db, table
from app.generations.usage import UsageRow, usage_by_model_and_tier

COLUMNS = ["model", "tier", "generations", "succeeded", "failed", "images_delivered",
           "credits_charged", "credits_refunded", "credits_net", "input_tokens", "output_tokens"]


def usage(
    since: Annotated[str | None, typer.Option(help="Only generations created since (ISO).")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Per model and tier: generations, images delivered, credits charged and refunded, and
    the provider's tokens in and out, to set prices against costs."""
    when = parse_when(since, "--since", past=True)

    async def work(session: AsyncSession) -> list[UsageRow]:
        return await usage_by_model_and_tier(session, since=when)

    rows = [row.model_dump() for row in run_db(work)]
    emit({"since": since, "usage": rows},
         table(rows, COLUMNS) if rows else "no generations in this period", as_json)
