"""CLI tables never cut an id (what people copy): at 80 columns they wrap text or leave columns out, and say which."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid

from rich.console import Console

from L07_learning.cli._tables import print_table


def _printed(width: int, columns: list[str], rows: list[tuple]) -> str:
    console = Console(width=width, record=True, force_terminal=False)
    print_table(console, "t", columns, rows)
    return console.export_text()


def test_ids_stay_whole_and_dropped_columns_are_named() -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    rows = [(i, "smollm2-135m-instruct", "1.0.0", "DEVELOPMENT", "NONE", "LORA_ADAPTER", "PENDING",
             "l07-signing-v001") for i in ids]
    out = _printed(80, ["model_id", "name", "version", "stage", "serving", "type", "validation", "key"], rows)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert all(i in out for i in ids) and "smollm2-135m-instruct" in out and "…" not in out
    assert re.search(r"not shown at 80 columns: .*key", out)
    wide = _printed(200, ["model_id", "name", "version", "stage", "serving", "type", "validation", "key"], rows)
    assert "not shown" not in wide and "l07-signing-v001" in wide


def test_long_text_wraps_instead_of_pushing_an_id_out() -> None:
    example = str(uuid.uuid4())
    detail = "the quality filter found a credential in the answer and quarantined the example for review " * 2
    out = _printed(80, ["example", "decision", "detail"], [(example, "QUARANTINE", detail)])
    assert example in out and "not shown" not in out
    assert "quarantined" in out and "…" not in out


def test_models_list_at_80_columns_shows_whole_ids(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from L07_learning.models import ModelArtifact, ModelType
    from L07_learning.pipelines.base_model import build_tiny_model
    from L07_learning.services.model_registry import ModelRegistry
    from L07_learning.store.db import Database
    from L07_learning.tests.factories.loop import CACHE

    async def register() -> str:
        db = Database(settings.database_url or "", auto_migrate=True)
        try:
            tiny = build_tiny_model(tmp_path / "tiny", seed=0, cache_dir=CACHE)
            return await ModelRegistry(db=db, settings=settings).register_model(
                ModelArtifact(name="smollm2-135m-instruct", model_type=ModelType.BASE), source_dir=str(tiny))
        finally:
            await db.dispose()

    model_id = asyncio.run(register())
    env = {**os.environ, "COLUMNS": "80"}
    shown = subprocess.run([sys.executable, "-m", "L07_learning.cli.main", "models", "list"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert model_id in shown.stdout and "smollm2-135m-instruct" in shown.stdout and "…" not in shown.stdout
    as_json = subprocess.run([sys.executable, "-m", "L07_learning.cli.main", "models", "list", "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert json.loads(as_json.stdout.strip().splitlines()[-1])["data"][0]["model_id"] == model_id
