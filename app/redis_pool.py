"""redis-py's asyncio connection pool, with the check of the connection it hands out made
outside its lock.

redis-py 5's `ConnectionPool.get_connection` holds the pool's lock while it makes sure the
connection is sound (`can_read_destructive`: a read under a zero timeout, which lasts one turn
of the event loop, and a connect for a new connection). Every command of the process then waits
its turn for that lock: one command per loop turn. In a process holding thousands of requests
(scenario L, docs/performance.md) a turn takes milliseconds, and the enqueue after a charge
waited up to 24 s behind the others. Taking a connection needs no lock at all in one event
loop (nothing in `get_available_connection` awaits); the check is the connection's own business,
as redis-py's `BlockingConnectionPool` already does it.
"""

from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection


class CheckOutsideLockPool(ConnectionPool):
    async def get_connection(self, command_name: Any = None, *keys: Any,
                             **options: Any) -> AbstractConnection:
        async with self._lock:
            connection = self.get_available_connection()
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection


async def use_lean_pool(client: "Redis") -> None:
    """Give `client` (the one arq's `create_pool` made, which pinged Redis) a pool of the class
    above with the same connection settings, and close the old pool's connection."""
    old = client.connection_pool
    if isinstance(old, CheckOutsideLockPool):
        return
    client.connection_pool = CheckOutsideLockPool(
        connection_class=old.connection_class, max_connections=old.max_connections,
        **old.connection_kwargs)
    await old.disconnect()
