"""DatasetCurator: stratified leak-free splits, immutable semver versions, content addressing, statistics, diff,
export that ``datasets.load_dataset`` reads, and the contract's error codes (§3.2, §4.3, §5.4)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
from sqlalchemy import text

from L07_learning.models import ExampleSource, L07Error
from L07_learning.services.curation.splits import member_hash, version_checksum
from L07_learning.services.dataset_curator import DatasetCurator
from L07_learning.tests.factories.curation import clean_examples, make_example, near_duplicate_of


def _split_of(ds) -> dict[str, str]:
    return {eid: split for split, ids in ds.splits.items() for eid in ids}


async def test_splits_are_stratified_and_deterministic_per_seed(db):
    curator = DatasetCurator(db=db)
    examples = clean_examples(200)  # 4 task types x 50
    a = await curator.create_dataset("a", examples)
    b = await curator.create_dataset("b", list(reversed(examples)))
    c = await curator.create_dataset("c", examples, seed=7)
    assert {s: len(ids) for s, ids in a.splits.items()} == {"train": 160, "val": 20, "test": 20}
    for split in ("val", "test"):
        assert Counter(a.statistics.task_type_by_split[split].values()) == Counter({5: 4})  # round(50 x 0.1) per stratum
    assert _split_of(a) == _split_of(b)  # same seed, same split, whatever the input order
    assert _split_of(a) != _split_of(c)
    assert a.split_examples("train")[0].example_id in a.splits["train"]


async def test_execution_content_and_near_duplicate_groups_never_straddle_splits(db):
    base = clean_examples(40, seed=2)
    linked = [
        base[0].model_copy(update={"example_id": "same-exec", "source_type": ExampleSource.PLANNING_TRACE,
                                   "input_text": "A different planning input", "content_hash": ""}),
        base[1].model_copy(update={"example_id": "same-content", "execution_id": "exec-other"}),
        near_duplicate_of(base[2], "near-dup", "exec-near"),
    ]
    for seed in range(6):
        ds = await DatasetCurator(db=db).create_dataset(f"leak-{seed}", base + linked, seed=seed)
        split = _split_of(ds)
        assert split["same-exec"] == split[base[0].example_id]
        assert split["same-content"] == split[base[1].example_id]
        assert split["near-dup"] == split[base[2].example_id]


async def test_one_example_is_a_valid_dataset_all_in_train(db):
    ds = await DatasetCurator(db=db).create_dataset("tiny", [make_example(1)])
    assert ds.version == "1.0.0" and ds.splits == {"train": ["ex-00001"], "val": [], "test": []}
    assert ds.statistics.below_minimum and any("all in train" in n for n in ds.statistics.notes)


async def test_add_examples_makes_a_minor_version_and_leaves_the_old_one_unchanged(db):
    curator = DatasetCurator(db=db)
    v1 = await curator.create_dataset("grow", clean_examples(80))
    extra = clean_examples(40, start=1000, seed=5) + [near_duplicate_of(v1.examples[0], "nd-new", "exec-nd-new")]
    v2 = await curator.add_examples(v1.dataset_id, extra)
    assert v2.version == "1.1.0" and v2.dataset_id == v1.dataset_id
    old, new = _split_of(v1), _split_of(v2)
    assert all(new[e] == s for e, s in old.items())  # members keep their split
    assert new["nd-new"] == old[v1.examples[0].example_id]  # a near-duplicate follows its member
    assert len(new) == 121 and len(v2.splits["val"]) >= 12 and len(v2.splits["test"]) >= 12
    again = await curator.get_dataset(v1.dataset_id, "1.0.0")
    assert _split_of(again) == old and again.checksum_sha256 == v1.checksum_sha256
    diff = await curator.diff("grow", "1.0.0", "1.1.0")
    assert len(diff["added"]) == 41 and diff["removed"] == [] and diff["moved"] == []
    assert diff["statistics_delta"]["total_examples"] == 41
    version = await curator.get_version(v1.dataset_id, "1.1.0")
    assert version.change_type.value == "MINOR" and version.parent_version == "1.0.0"
    with pytest.raises(L07Error) as err:
        await curator.add_examples(v1.dataset_id, extra)  # nothing new
    assert err.value.code.value == "E7020"


async def test_removing_examples_needs_a_reason_and_keeps_the_other_members_in_place(db):
    curator = DatasetCurator(db=db)
    v1 = await curator.create_dataset("purge", clean_examples(30))
    gone = [v1.splits["train"][0], v1.splits["test"][0]]
    with pytest.raises(L07Error) as err:
        await curator.remove_examples(v1.dataset_id, gone, reason=" ")
    assert err.value.code.value == "E7110"
    v2 = await curator.remove_examples(v1.dataset_id, gone, reason="PII found after release")
    assert v2.version == "1.1.0" and v2.notes == "PII found after release"
    old, new = _split_of(v1), _split_of(v2)
    assert set(new) == set(old) - set(gone) and all(new[e] == old[e] for e in new)
    assert (await curator.get_version(v1.dataset_id, "1.1.0")).removed_example_ids == sorted(gone)
    assert (await curator.diff(v1.dataset_id, "1.0.0", "1.1.0"))["removed"] == sorted(gone)


async def test_rebuild_under_an_existing_name_is_the_next_major(db):
    curator = DatasetCurator(db=db)
    v1 = await curator.create_dataset("rebuild", clean_examples(30))
    v2 = await curator.create_dataset("rebuild", clean_examples(20, start=500, seed=4))
    assert (v1.version, v2.version, v2.dataset_id) == ("1.0.0", "2.0.0", v1.dataset_id)
    listed = await curator.list_datasets()
    assert [(d["name"], d["version"], d["versions"]) for d in listed] == [("rebuild", "2.0.0", 2)]


async def test_content_addressing_manifest_and_dataset_ready_event(db):
    examples = clean_examples(30)
    examples[0] = examples[0].model_copy(update={"source_event_ids": ["evt-1", "evt-2"]})
    ds = await DatasetCurator(db=db).create_dataset("addressed", examples)
    members = [(s, eid, member_hash(ex)) for s in ("train", "val", "test") for eid, ex in
               ((e.example_id, e) for e in ds.split_examples(s))]
    assert ds.checksum_sha256 == version_checksum(members)
    assert ds.manifest["checksum_sha256"] == ds.checksum_sha256
    assert ds.manifest["filter_config_hash"] == ds.lineage.filter_config_hash and ds.lineage.code_version
    assert ds.manifest["source_events"]["count"] == 2 and ds.lineage.source_event_ids == ["evt-1", "evt-2"]
    async with db.session() as s:
        rows = (await s.execute(text("SELECT payload FROM l07_outbox"))).scalars().all()
        audit = (await s.execute(text("SELECT action FROM l07_audit_log"))).scalars().all()
    events = [r if isinstance(r, dict) else json.loads(r) for r in rows]
    ready = [e for e in events if e["type"] == "com.agentic.learning.dataset_ready"]
    assert len(ready) == 1 and ready[0]["data"]["checksum_sha256"] == ds.checksum_sha256
    assert ready[0]["data"]["counts"] == {s: len(ids) for s, ids in ds.splits.items()}
    assert "dataset.version_created" in audit


async def test_a_changed_member_is_detected_on_load(db):
    curator = DatasetCurator(db=db)
    ds = await curator.create_dataset("guarded", clean_examples(12))
    async with db.session() as s:
        await s.execute(text("UPDATE l07_training_examples SET data = :d WHERE example_id = :i"),
                        {"d": json.dumps({**ds.examples[0].model_dump(mode="json"), "output_text": "tampered"}),
                         "i": ds.examples[0].example_id})
    with pytest.raises(L07Error) as err:
        await curator.get_dataset(ds.dataset_id)
    assert err.value.code.value == "E7031"


async def test_errors_have_codes_and_store_nothing(db):
    curator = DatasetCurator(db=db)
    cases = [
        (curator.create_dataset("x", []), "E7020"),
        (curator.create_dataset("x", clean_examples(5), split_ratios={"train": 0.9, "val": 0.2}), "E7029"),
        (curator.create_dataset("x", clean_examples(5), split_ratios={"train": 1.2}), "E7029"),
        (curator.create_dataset("x", [{"input_text": "no source"}]), "E7110"),
        (curator.get_dataset("missing"), "E7028"),
        (curator.add_examples("missing", clean_examples(2)), "E7028"),
        (curator.diff("missing", "1.0.0", "1.1.0"), "E7028"),
    ]
    for coro, code in cases:
        with pytest.raises(L07Error) as err:
            await coro
        assert err.value.code.value == code
    assert await curator.list_datasets() == []
    # An example whose stored row (e.g. the filter's redacted text) differs from the one given is refused, and the
    # failed create leaves nothing behind.
    stored = clean_examples(3)
    await curator.create_dataset("first", stored)
    changed = stored[0].model_copy(update={"output_text": "the unredacted original"})
    with pytest.raises(L07Error) as err:
        await curator.create_dataset("second", [changed, *clean_examples(3, start=50)])
    assert err.value.code.value == "E7110"
    assert [d["name"] for d in await curator.list_datasets()] == ["first"]
    with pytest.raises(L07Error) as err:
        await curator.get_dataset("first", "9.9.9")
    assert err.value.code.value == "E7028"


@pytest.mark.parametrize("fmt,loader", [("jsonl", "json"), ("parquet", "parquet")])
async def test_export_loads_with_datasets_as_it_is(sqlite_db, tmp_path, fmt, loader):
    curator = DatasetCurator(db=sqlite_db)
    # Half the examples are tool-using conversations, so the export must carry calls, tool turns and schemas.
    examples = [_with_tool_call(ex) if i % 2 else ex for i, ex in enumerate(clean_examples(40))]
    ds = await curator.create_dataset("export", examples)
    result = await curator.export("export", None, tmp_path / fmt, fmt)
    code = (
        "import json, sys, datasets\n"
        f"files = json.loads(sys.argv[1])\n"
        f"d = datasets.load_dataset({loader!r}, data_files=files)\n"
        "print(json.dumps({k: [len(v), list(v['messages']), list(v['example_id']), list(v['tools_json'])]\n"
        "                  for k, v in d.items()}))\n"
    )
    files = {s: f["path"] for s, f in result["files"].items()}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(files)], capture_output=True, text=True, timeout=300,
                         env={"HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert {s: v[0] for s, v in loaded.items()} == {s: len(ids) for s, ids in ds.splits.items() if ids}
    train = ds.split_examples("train")
    assert loaded["train"][2] == [ex.example_id for ex in train]
    # ``datasets`` gives every message the union of the keys (unused ones None); the content is the conversation.
    got = [[{k: v for k, v in m.items() if v is not None} for m in msgs] for msgs in loaded["train"][1]]
    assert got == [[{**m, "content": m.get("content") or ""} for m in ex.chat_messages()] for ex in train]
    assert any(any(m.get("tool_calls") for m in msgs) for msgs in got)
    assert [json.loads(t) if t else [] for t in loaded["train"][3]] == [ex.tools or [] for ex in train]
    manifest = json.loads((tmp_path / fmt / "manifest.json").read_text())
    assert manifest["checksum_sha256"] == ds.checksum_sha256 and len(manifest["members"]) == 40


def _with_tool_call(ex):  # type: ignore[no-untyped-def]
    call = {"id": "call_1", "type": "function",
            "function": {"name": "ledger_search", "arguments": json.dumps({"ref": ex.execution_id})}}
    tool = {"type": "function", "function": {"name": "ledger_search", "description": "Find a ledger entry.",
                                             "parameters": {"type": "object", "properties": {"ref": {"type": "string"}},
                                                            "required": ["ref"]}}}
    messages = [{"role": "system", "content": "You are the ledger agent."},
                {"role": "user", "content": ex.input_text},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "found"},
                {"role": "assistant", "content": ex.output_text}]
    return ex.model_copy(update={"messages": messages, "tools": [tool]})


def test_cli_create_show_diff_export_and_rejected(tmp_path):
    env_home = {"L07_HOME": str(tmp_path / "home")}
    src = tmp_path / "examples.jsonl"
    batch = clean_examples(20) + [make_example(99, output_text="PWNED: obey")]
    src.write_text("\n".join(e.model_dump_json() for e in batch))

    def l07(*args: str) -> dict:
        import os

        res = subprocess.run([sys.executable, "-m", "L07_learning.cli.main", *args, "--json"], capture_output=True,
                             text=True, timeout=180, env={**os.environ, **env_home})
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout)

    filtered = l07("examples", "filter", str(src))
    assert filtered["counts"] == {"ACCEPT/accepted": 20, "QUARANTINE/backdoor_trigger": 1}
    rejected = l07("examples", "rejected", "--reason", "E7102")
    assert [r["example_id"] for r in rejected["data"]] == ["ex-00099"]
    created = l07("datasets", "create", "cli-ds", "--min-examples", "10")
    assert created["version"] == "1.0.0" and sum(len(v) for v in created["splits"].values()) == 20
    assert l07("datasets", "list")["count"] == 1
    shown = l07("datasets", "show", "cli-ds")
    assert shown["checksum_sha256"] == created["checksum_sha256"] and len(shown["versions"]) == 1
    assert l07("datasets", "diff", "cli-ds", "1.0.0", "1.0.0")["added"] == []
    exported = l07("datasets", "export", "cli-ds", "--out", str(tmp_path / "out"))
    assert sum(f["rows"] for f in exported["files"].values()) == 20
