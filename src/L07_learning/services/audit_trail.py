"""The audit trail as the API and the CLI use it: bind where actions come from, record a row on its own, verify the
hash chain (contract §7.4 "Audit").

Rows of changes are written by the services in the change's own transaction (``store/repositories/audit.py``); this
module adds what the entry points need around them.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .. import __version__
from ..store.audit_chain import ChainReport, canonical_details
from ..store.db import Database
from ..store.repositories.audit import CALL, ORIGIN, CallRecord, Origin, StaticOrigin, audit, verify_chain

__all__ = ["AuditTrail", "CALL", "CallRecord", "ORIGIN", "Origin", "StaticOrigin", "bind_origin", "canonical_details",
           "cli_origin"]


@contextmanager
def bind_origin(origin: Origin | None) -> Iterator[None]:
    """Rows written inside the block record ``origin`` (address, user agent, default actor)."""
    token = ORIGIN.set(origin)
    try:
        yield
    finally:
        ORIGIN.reset(token)


def cli_origin() -> StaticOrigin:
    """The CLI's origin: the OS user on this host (no network address: the command runs here)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers): the numeric id still names the account
        user = f"uid-{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    host = socket.gethostname() or "localhost"
    return StaticOrigin(ip_address=None, user_agent=f"l07-cli/{__version__} ({user}@{host}; pid {os.getpid()})",
                        actor_type="user", actor_id=f"{user}@{host}")


class AuditTrail:
    """Records stand-alone audit rows and verifies the chain.

    Args:
        db: The database holding the audit log.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, action: str, resource_type: str, resource_id: str | None, **fields: Any) -> str:
        """One audit row in its own transaction (an action that changes nothing stored: a refusal, a read)."""
        async with self.db.session() as session:
            return await audit(session, action, resource_type, resource_id, **fields)

    async def verify(self) -> ChainReport:
        """Walk the whole chain; the report names the first row that was edited, deleted or inserted around it."""
        async with self.db.session() as session:
            return await verify_chain(session)
