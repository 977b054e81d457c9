"""What endpoints ask for, as Annotated aliases, so a signature reads like prose:

    async def get_credits(principal: CurrentPrincipal, reader: ReaderDep) -> CreditBalance:

- `RuntimeDep`: the process's shared runtime (database, storage, provider, queue, catalog).
- `SessionDep`: a session in one transaction, committed by this dependency when the endpoint
  has returned and before the answer is sent (rolled back if it raised), after-commit callbacks
  (jobs to enqueue) run then. Services never commit.
- `ReaderDep`: a session for reads that need no transaction (autocommit on PostgreSQL).
- `CurrentPrincipal`: the caller, authenticated by their Bearer key.

Sessions connect at their first statement, so a request that first streams an upload holds
no connection meanwhile.
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.keys import service as keys
from app.keys.service import Principal
from app.ops.middleware import note
from app.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a hop per request
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(rt: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with rt.transaction() as session:
        yield session


async def get_reader(rt: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with rt.reader() as session:
        yield session


# scope="function": the exit (the commit) runs before the response is sent, so a client never
# sees a success whose transaction then failed.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
ReaderDep = Annotated[AsyncSession, Depends(get_reader, scope="function")]


async def current_principal(request: Request, rt: RuntimeDep) -> Principal:
    """Authenticate on a short connection of its own (one lookup, at most one update of
    `last_used_at`): a request that then waits minutes for its generation holds no connection."""
    authorization = request.headers.get("authorization")
    if rt.direct is not None:  # PostgreSQL: one statement, no ORM
        principal = await keys.authenticate_direct(rt.direct, authorization, secret=rt.secret)
    else:
        async with rt.reader() as session:
            principal = await keys.authenticate(session, authorization, secret=rt.secret)
            await session.commit()  # the last-used update
    note(request, user_id=principal.user.id)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
