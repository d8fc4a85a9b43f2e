"""CloudEvents lines for the task-family factories: deterministic ids from the family's random generator and a clock
that advances one second per event, so a family's file is the same for the same seed."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any


def envelope_maker(rng: random.Random, start: datetime) -> Callable[[str, str, dict[str, Any]], str]:
    """``envelope(type, source, data)`` -> one JSON line, its id drawn from ``rng``, its time one second later."""
    clock = [start]

    def envelope(type_: str, source: str, data: dict[str, Any]) -> str:
        clock[0] += timedelta(seconds=1)
        return json.dumps({"specversion": "1.0", "type": type_, "source": source,
                           "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                           "time": clock[0].isoformat().replace("+00:00", "Z"), "datacontenttype": "application/json",
                           "data": data}, sort_keys=True)

    return envelope
