"""Database access: one async engine per URL, a commit-or-rollback session scope, schema checks and upgrades.

The backend is chosen by URL: ``sqlite+aiosqlite:///path`` (embedded default) or ``postgresql+asyncpg://...``.
Plain ``sqlite:///`` and ``postgresql://`` URLs are upgraded to their async drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from ..models.error_codes import L07Error, L07ErrorCode
from ..settings import get_settings, private_dir, private_file
from .tables import Base

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Map sync driver URLs onto the async drivers L07 uses."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the package's migrations, usable without an ini file."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() or ""


class Database:
    """An async SQLAlchemy engine plus session factory for one database URL.

    Args:
        url: SQLAlchemy URL. SQLite files get their folder created.
        schema: Optional PostgreSQL schema to use (tests isolate runs this way).
        auto_migrate: Upgrade to the newest revision on ``connect()`` instead of refusing an old schema.
    """

    def __init__(self, url: str, *, schema: str | None = None, auto_migrate: bool = False, echo: bool = False) -> None:
        self.url = normalise_url(url)
        self.schema = schema
        self.auto_migrate = auto_migrate
        self.is_sqlite = self.url.startswith("sqlite")
        connect_args: dict = {}
        kwargs: dict = {"echo": echo, "pool_pre_ping": True}
        if self.is_sqlite:
            path = self.url.split("///", 1)[1] if "///" in self.url else ""
            if path and path != ":memory:":
                _private_sqlite_file(Path(path))
            connect_args["timeout"] = _BUSY_TIMEOUT_S
        elif schema:
            connect_args["server_settings"] = {"search_path": schema}
        self.engine: AsyncEngine = create_async_engine(self.url, connect_args=connect_args, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._ready = False
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A unit of work: commits on success, rolls back on any error, so no partial rows survive."""
        await self.connect()
        async with self._sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def connect(self) -> None:
        """Check reachability and schema version once; upgrade when ``auto_migrate``.

        Raises:
            L07Error: E7903 when the database cannot be reached, E7905 when its schema is older than the code.
        """
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            current = await self.current_revision()
            head = head_revision()
            if current != head:
                if self.auto_migrate:
                    await self.upgrade()
                else:
                    raise L07Error(
                        L07ErrorCode.CONFIGURATION_NOT_FOUND,
                        f"database schema is at revision {current or 'none'}, this code needs {head}: "
                        f"run `l07 db upgrade`",
                        url=self.safe_url, current=current, head=head,
                    )
            self._ready = True

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return self.engine.url.render_as_string(hide_password=True)

    async def current_revision(self) -> str | None:
        """The schema revision stored in the database (None before the first migration)."""
        try:
            async with self.engine.connect() as conn:
                return await conn.run_sync(lambda c: MigrationContext.configure(c, opts=self._mc_opts()).get_current_revision())
        except (OSError, OperationalError, DBAPIError) as exc:
            raise L07Error(
                L07ErrorCode.NETWORK_CONNECTIVITY_ERROR,
                f"cannot reach the database at {self.safe_url}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}. "
                "Check L07_DATABASE_URL and that the server is running.",
                url=self.safe_url,
            ) from exc

    def _mc_opts(self) -> dict:
        return {"version_table_schema": self.schema} if self.schema else {}

    async def upgrade(self, revision: str = "head") -> None:
        """Run Alembic migrations up to ``revision`` inside one connection."""
        await self._alembic("upgrade", revision)

    async def downgrade(self, revision: str = "base") -> None:
        """Run Alembic migrations down to ``revision``."""
        await self._alembic("downgrade", revision)
        self._ready = False

    async def _alembic(self, direction: str, revision: str) -> None:
        from alembic import command

        cfg = alembic_config(self.url)

        def run(sync_conn) -> None:  # type: ignore[no-untyped-def]
            cfg.attributes["connection"] = sync_conn
            cfg.attributes["schema"] = self.schema
            cfg.attributes["metadata"] = Base.metadata
            getattr(command, direction)(cfg, revision)

        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(run)
        except (OSError, OperationalError) as exc:
            raise L07Error(L07ErrorCode.NETWORK_CONNECTIVITY_ERROR, f"migration failed: {exc}") from exc
        log.info("database %s to %s", direction, revision, extra={"url": self.safe_url})

    async def ping(self) -> bool:
        """True when a trivial query succeeds (readiness probe)."""
        from sqlalchemy import text

        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready"; the probe reports, never raises
            return False

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _private_sqlite_file(path: Path) -> None:
    """The database file and its folder readable by the owner only (file 0600, new folders 0700; the L07 home is
    tightened to 0700). SQLite creates the -wal and -shm files with the database file's mode; existing ones are
    tightened too."""
    try:
        private_dir(path.parent)
        home = Path(get_settings().home).expanduser()
        if path.parent.resolve() == home.resolve():
            os.chmod(home, 0o700)
        private_file(path)
        for suffix in ("-wal", "-shm", "-journal"):
            # No exists() check first: another process closing the database deletes these files at any moment.
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path.with_name(path.name + suffix), 0o600)
    except OSError as exc:
        # A database file of another owner (shared deployment): its owner decides its mode; opening it may still work.
        # Anything else wrong with the path (a folder, a missing mount) is reported by the first connection, where
        # readiness checks and callers expect it, not by building the Database object.
        log.warning("cannot make %s owner-only: %s", path, exc)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the worker process and the API read while a job writes; busy_timeout rides out short lock waits.
    # synchronous=NORMAL is WAL's recommended level: a commit survives an application crash and only syncs at
    # checkpoints, which takes the fsync off every ingestion batch (a power cut may lose the last commits; PostgreSQL
    # is the deployment for that guarantee).
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}")
    _switch_to_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _switch_to_wal(cur) -> None:  # type: ignore[no-untyped-def]
    """``PRAGMA journal_mode=WAL``, retried for as long as the busy timeout while another process holds the lock.

    On a database file still in rollback mode (a new one), the switch needs the exclusive lock. When another process
    holds or wants the write lock at that moment (``l07 run`` creating its schema while ``l07 loop status`` opens the
    file), SQLite treats the wait as a possible deadlock and answers "database is locked" at once, without calling the
    busy handler (sqlite.org/c3ref/busy_handler.html), so ``busy_timeout`` does not cover it.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    delay = 0.01
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


_BUSY_TIMEOUT_S = 30


_databases: dict[tuple[str, str | None], Database] = {}


def get_database(url: str | None = None, schema: str | None = None) -> Database:
    """The shared ``Database`` for a URL (default: settings), created on first use."""
    settings = get_settings()
    url = normalise_url(url or settings.database_url or "")
    key = (url, schema)
    if key not in _databases:
        auto = settings.auto_migrate if url == normalise_url(settings.database_url or "") else url.startswith("sqlite")
        _databases[key] = Database(url, schema=schema, auto_migrate=bool(auto))
    return _databases[key]


async def close_all() -> None:
    """Dispose every shared engine (service cleanup)."""
    for db in list(_databases.values()):
        await db.dispose()
    _databases.clear()
