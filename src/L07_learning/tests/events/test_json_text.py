"""The orjson fast paths read and write exactly what the standard library does (events/json_text.py)."""

from __future__ import annotations

import json
import math
import random
import struct

import pytest

from L07_learning.events.json_text import canonical_dumps, read
from L07_learning.services.training_data_extractor import TrainingDataExtractor
from L07_learning.settings import Settings
from L07_learning.store.db import Database

from ..services.ingestion.test_extractor import score_event, trace_event


def _stdlib_canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _floats(n: int) -> list[float]:
    rng = random.Random(5)
    out = [1e16, 1e-5, 1e-4, 9999999999999998.0, 5e-324, -0.0, 1.5e300, 0.1, 100.0]
    for _ in range(n):
        out.append(struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0])
        out.append(10.0 ** rng.randint(-30, 30) * rng.random())
        out.append(round(rng.uniform(-1e5, 1e5), rng.randint(0, 10)))
    return [f for f in out if math.isfinite(f)]


def test_canonical_dumps_matches_json_dumps():
    for f in _floats(3000):
        for value in (f, [1, f], {"b": f, "a": [f, "x"]}):
            assert canonical_dumps(value) == _stdlib_canonical(value)
    odd = {"é": "😀\u2028\x01\t\"\\", "a": None, "n": 2**70, "t": (1, 2), "s": {1}}
    assert canonical_dumps(odd) == _stdlib_canonical(odd)
    assert canonical_dumps({3: "int keys", 1: True}) == _stdlib_canonical({3: "int keys", 1: True})
    chars = "".join(chr(i) for i in range(0x3000))
    assert canonical_dumps({chars: chars}) == _stdlib_canonical({chars: chars})


@pytest.mark.parametrize("text", [
    '{"a": 1, "a": 2}', '{"big": 123456789012345678901234567890}', "[NaN, Infinity, -Infinity]", "1e400",
    '"\\ud800"', "[" * 300 + "]" * 300, '{"x": -0.0, "y": 1E2, "z": "\\u00e9"}', "\ufeff{}", '{"a": "\x01"}', "{",
    "[-9223372036854775809, 18446744073709551616, -0, 9223372036854775807]",
])
def test_read_matches_json_loads(text: str):
    try:
        expected: object = json.loads(text)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            read(text)
        return
    value, plain = read(text)
    assert json.dumps(value) == json.dumps(expected)
    if plain:  # orjson read it: only finite floats
        assert "NaN" not in json.dumps(value) and "Infinity" not in json.dumps(value)


async def test_non_finite_number_in_text_is_rejected_as_e7110(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'nan.db'}", auto_migrate=True)
    try:
        ex = TrainingDataExtractor(db=db, settings=Settings(home=str(tmp_path)))
        trace = trace_event("exec-nan")
        trace["data"]["execution_trace"][0]["parameters"] = {"limit": "NAN_HERE"}
        text = json.dumps(trace).replace('"NAN_HERE"', "NaN")
        assert await ex.extract_batch([text, score_event("exec-nan")]) == []
        assert ex.last_result.summary.rejected_by_code == {"E7110": 1}
    finally:
        await db.dispose()
