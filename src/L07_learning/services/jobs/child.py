"""The entry of a job's training process: ``python -m L07_learning.services.jobs.child SPEC_JSON``.

It runs the job kind's pipeline ``entry`` (table ``kinds.JOB_KINDS``) and reports on its original stdout as JSON lines
(``step``, ``eval``, ``checkpoint``, then ``result`` or ``error``); library output goes to stderr, which the runner
sends to ``child.log``. Under ``torchrun`` only rank 0 reports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.training_job import JobType
from .kinds import JOB_KINDS

log = logging.getLogger(__name__)

CANCEL_FILE = "CANCEL"
"""Written into the job's folder by the runner to ask the child to stop within one optimizer step."""


def command(spec_path: Path, nproc: int) -> list[str]:
    """The command line that runs a job's training process (under ``torchrun`` for several processes)."""
    child = ["-m", __name__, str(spec_path)]
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *child]
    return [sys.executable, *child]


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphaned training)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def child_main(spec_path: str) -> int:
    """Run one job's pipeline entry point; protocol: JSON lines on the original stdout."""
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # parent died before prctl took effect
        return 3
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    rank = int(os.environ.get("RANK", "0"))
    spec = json.loads(Path(spec_path).read_text())
    cancel_flag = Path(spec_path).parent / CANCEL_FILE

    def emit(kind: str, payload: dict[str, Any]) -> None:
        if rank == 0:
            channel.write(json.dumps({"kind": kind, "payload": payload}, default=str) + "\n")

    def should_cancel() -> bool:
        return cancel_flag.exists()

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        result = JOB_KINDS[JobType(spec["job_type"])].entry(spec, emit, should_cancel)
        emit("result", result)
        return 0
    except L07Error as exc:
        log.exception("job failed with %s", exc.code.value)
        emit("error", {"code": exc.code.value, "message": exc.message, "details": exc.details})
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the worker as E7910 with the trace in child.log
        log.exception("unhandled error in training process")
        emit("error", {"code": L07ErrorCode.UNHANDLED_EXCEPTION.value, "message": f"{type(exc).__name__}: {exc}"})
        return 1


if __name__ == "__main__":
    if len(sys.argv) == 2:
        sys.exit(child_main(sys.argv[1]))
    sys.stderr.write("usage: python -m L07_learning.services.jobs.child SPEC_JSON\n")
    sys.exit(2)
