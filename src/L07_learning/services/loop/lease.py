"""The leader lock: a lease row that one ``l07 run`` process holds and renews (contract §9).

The holder renews on every tick; a process that dies stops renewing, its lease expires after ``ttl_s`` (at most
30 s) and the next process to tick takes it, so schedules have a new leader within a minute.
"""

from __future__ import annotations

import os
import socket
import uuid

from ...models._base import utcnow
from ...store.db import Database
from ...store.repositories.loop import LoopRepository

LEADER_LEASE = "loop-leader"


def process_holder() -> str:
    """A name unique to this process (host, pid and a random part, so a restarted pid is a new holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaderLease:
    """One process's claim on a named lease.

    Args:
        db: The shared database.
        holder: This process's name (default ``process_holder()``).
        ttl_s: Lease lifetime without renewal.
        name: The lease (default the loop's leader lease).
    """

    def __init__(self, db: Database, holder: str | None = None, ttl_s: float = 30.0, name: str = LEADER_LEASE) -> None:
        self.db = db
        self.holder = holder or process_holder()
        self.ttl_s = ttl_s
        self.name = name
        self.is_leader = False

    async def acquire(self) -> bool:
        """Take the lease when it is free or expired, renew it when it is ours; True while we lead."""
        async with self.db.session() as session:
            self.is_leader = await LoopRepository(session).acquire_lease(self.name, self.holder, self.ttl_s, utcnow())
        return self.is_leader

    async def release(self) -> None:
        """Give the lease up (orderly shutdown) so another process leads at its next tick."""
        async with self.db.session() as session:
            await LoopRepository(session).release_lease(self.name, self.holder, utcnow())
        self.is_leader = False

    async def current(self) -> dict[str, str | bool | None]:
        """Who leads now: ``{holder, expires_at, alive}``."""
        async with self.db.session() as session:
            row = await LoopRepository(session).lease(self.name)
        if row is None:
            return {"holder": None, "expires_at": None, "alive": False}
        holder, expires = row
        return {"holder": holder, "expires_at": expires.isoformat(), "alive": expires > utcnow()}
