"""Delivering webhook events: at least once, signed, with backoff."""

from app.runtime import Runtime


async def dispatch(rt: Runtime, generation_id: str) -> None:
    """After the transaction that ended the generation: queue the delivery of its event."""
    return None


async def deliver_due(rt: Runtime) -> None:
    """From the sweep: deliver (or queue) the pending events whose next attempt is due."""
    return None
