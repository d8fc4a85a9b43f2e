"""Each importer reads a file written the way its tool writes it, with malformed records among good ones: every
record is imported, filtered (with the filter's reason) or refused (with its line number and E7xxx code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from L07_learning.models import ExampleSource
from L07_learning.services.example_quality_filter import ExampleQualityFilter
from L07_learning.services.importers.run import Importer
from L07_learning.services.queries import Queries
from L07_learning.store.db import Database
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.repositories.rewards import RewardRepository

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def importer(settings, sqlite_db: Database) -> Importer:  # type: ignore[no-untyped-def]
    return Importer(sqlite_db, ExampleQualityFilter(db=sqlite_db, settings=settings))


def _lines(report: Any) -> dict[str, Any]:
    return {
        "imported": [r["line"] for r in report.imported],
        "filtered": [(r["line"], r["decision"], r["reason"]) for r in report.filtered],
        "refused": [(r["line"], r["code"]) for r in report.refused],
        "skipped": [r["line"] for r in report.skipped],
    }


async def test_openai_chat_jsonl_with_tools(importer: Importer, sqlite_db: Database) -> None:
    report = await importer.import_file("openai-chat", FIXTURES / "openai_chat.jsonl")
    assert _lines(report) == {
        "imported": [1, 2, 4, 11],
        "filtered": [(7, "QUARANTINE", "secret"), (8, "REJECT", "duplicate")],
        "refused": [(3, "E7015"), (5, "E7010"), (6, "E7110"), (9, "E7012")],
        "skipped": [],
    }
    assert report.counts()["imported"] == 4 and report.filtered[0]["code"] == "E7111"
    async with sqlite_db.session() as session:
        [stored] = await ExampleRepository(session).get_many([report.imported[0]["example_id"]])
    # Messages and tools as training consumes them, provenance down to the line.
    assert stored.source_type is ExampleSource.IMPORTED
    assert stored.metadata["import"] == {"format": "openai-chat", "file": "openai_chat.jsonl",
                                         "sha256": report.sha256, "line": 1}
    row = stored.chat_row()
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert row["messages"][2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert row["tools"][0]["function"]["name"] == "get_weather"
    # Refused lines are stored with their code, queryable like any filter rejection.
    rows, _ = await Queries(sqlite_db).filter_rejections(reason="unreadable", limit=50)
    assert sorted((r["code"], r["detail"].split(":")[0]) for r in rows) == [
        ("E7010", "line 5"), ("E7012", "line 9"), ("E7015", "line 3"), ("E7110", "line 6")]

    again = await importer.import_file("openai-chat", FIXTURES / "openai_chat.jsonl")
    assert again.counts()["imported"] == 0  # nothing enters twice: the second import's lines are duplicates
    assert {r["reason"] for r in again.filtered} >= {"duplicate"}


async def test_openai_preference_jsonl_makes_pairs(importer: Importer, sqlite_db: Database) -> None:
    report = await importer.import_file("openai-preference", FIXTURES / "openai_preference.jsonl")
    assert _lines(report) == {
        "imported": [1, 2],
        "filtered": [(6, "QUARANTINE", "prompt_injection")],
        "refused": [(3, "E7010"), (4, "E7015"), (5, "E7110")],
        "skipped": [],
    }
    async with sqlite_db.session() as session:
        pairs = await RewardRepository(session).list_pairs()
    assert report.pairs == 2 and len(pairs) == 2
    warranty = next(p for p in pairs if "warranty" in p.prompt)
    assert warranty.chosen.startswith("Two years") and warranty.rejected == "Warranties vary."
    assert warranty.chosen_example_id == report.imported[1]["example_id"]


async def test_a_files_pairs_are_found_through_its_accepted_examples(settings,  # type: ignore[no-untyped-def]
                                                                    db: Database) -> None:
    """What a dpo job trains on (``preference_pairs: "stored"``): the pairs of exactly the examples it names."""
    report = await Importer(db, ExampleQualityFilter(db=db, settings=settings)).import_file(
        "openai-preference", FIXTURES / "openai_preference.jsonl")
    vpn, warranty = report.example_ids
    async with db.session() as session:
        repo = RewardRepository(session)
        [pair] = await repo.pairs_for_examples([warranty, "no-such-example"])
        both = await repo.pairs_for_examples(report.example_ids)
    assert (pair.chosen_example_id, pair.rejected, pair.source) == (warranty, "Warranties vary.",
                                                                    "import:openai-preference")
    assert sorted(p.chosen_example_id for p in both) == sorted([vpn, warranty])


async def test_langfuse_trace_export(importer: Importer) -> None:
    report = await importer.import_file("langfuse", FIXTURES / "langfuse_traces.json")
    assert _lines(report) == {
        "imported": [1, 2],
        "filtered": [(3, "REVIEW", "low_confidence"), (4, "REJECT", "low_quality")],
        "refused": [(5, "E7010"), (6, "E7010"), (7, "E7110")],
        "skipped": [],
    }
    assert report.filtered[0]["code"] == "E7021"  # an unscored trace is never trained on by default


async def test_langsmith_run_export(importer: Importer, sqlite_db: Database) -> None:
    report = await importer.import_file("langsmith", FIXTURES / "langsmith_runs.jsonl")
    assert _lines(report) == {
        "imported": [1, 2],
        "filtered": [(6, "REJECT", "low_quality"), (7, "REVIEW", "low_confidence")],
        "refused": [(4, "E7010"), (5, "E7015")],
        "skipped": [3],
    }
    async with sqlite_db.session() as session:
        [tool_run] = await ExampleRepository(session).get_many([report.imported[1]["example_id"]])
    assert tool_run.messages[-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert tool_run.quality_score == pytest.approx(95.0) and tool_run.metadata["import"]["run_id"] == "r-2"


def _hf_rows() -> list[dict[str, Any]]:
    chat = [("Where is the fire exit on floor three?", "Behind the kitchen, next to the lifts."),
            ("Which printer handles A3 posters?", "The plotter in room 3.14; send jobs to queue 'plot'."),
            ("When does the cafeteria close on Fridays?", "At 15:00; the vending machines stay on.")]
    rows: list[dict[str, Any]] = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                                  for q, a in chat]
    rows.append({"messages": [{"role": "user", "content": "Who approves travel above 2000 euros?"}]})
    rows.append({"messages": None})
    rows.append(rows[1])
    return rows


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
async def test_hugging_face_dataset(importer: Importer, tmp_path: Path, layout: str) -> None:
    import datasets

    data = datasets.Dataset.from_list(_hf_rows())
    path = tmp_path / ("saved" if layout == "save_to_disk" else "chat.parquet")
    data.save_to_disk(str(path)) if layout == "save_to_disk" else data.to_parquet(str(path))
    report = await importer.import_file("hf", path)
    assert _lines(report) == {"imported": [1, 2, 3], "filtered": [(6, "REJECT", "duplicate")],
                              "refused": [(4, "E7110"), (5, "E7010")], "skipped": []}


async def test_unknown_format_and_missing_file_are_refused_whole(importer: Importer, tmp_path: Path) -> None:
    from L07_learning.models.error_codes import L07Error

    with pytest.raises(L07Error) as err:
        await importer.import_file("csv", FIXTURES / "openai_chat.jsonl")
    assert err.value.code.value == "E7110"
    with pytest.raises(L07Error) as err:
        await importer.import_file("hf", tmp_path / "missing")
    assert err.value.code.value == "E7031"
