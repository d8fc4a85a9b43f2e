"""Developer tool: rewrite the initial migration from the ORM metadata.

Until the first release there is one migration, ``0001_initial``; after a release, add new revisions with
``alembic revision --autogenerate`` instead. Run: ``PYTHONPATH=src python -m L07_learning.store.regen_migration``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from .db import MIGRATIONS_DIR, alembic_config
from .tables import Base


def main() -> None:
    versions = MIGRATIONS_DIR / "versions"
    versions.mkdir(exist_ok=True)
    for old in versions.glob("0001_*.py"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'empty.db'}"
        cfg = alembic_config(url)
        with create_engine(url).connect() as conn:
            cfg.attributes["connection"] = conn
            cfg.attributes["metadata"] = Base.metadata
            command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")
    for path in versions.glob("0001_*.py"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
