"""The brief's final integration script runs unchanged from the repo root and prints both lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from L07_learning.tests.paths import REPO_ROOT

BRIEF_SCRIPT = '''
import asyncio
import sys
sys.path.insert(0, '.')

async def test():
    from src.L07_learning.services.learning_service import LearningService
    from src.L07_learning.models.training_example import TrainingExample, ExampleSource

    service = LearningService()
    await service.initialize()

    # Create mock training example
    example = TrainingExample(
        example_id="test-1",
        source_type=ExampleSource.EXECUTION_TRACE,
        input_text="Summarize this document",
        output_text="The document discusses...",
        quality_score=85.0,
        confidence=0.9,
        metadata={"agent_id": "agent-1", "task_type": "summarization"}
    )

    # Test extraction and filtering
    filtered = await service.filter_examples([example])
    print(f"Filtered examples: {len(filtered)}")

    # Test dataset creation
    dataset = await service.create_training_dataset(
        name="test-dataset",
        examples=filtered
    )
    print(f"Dataset created: {dataset.dataset_id}")

    await service.cleanup()

asyncio.run(test())
'''


def _run(home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("L07_")}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-"], input=BRIEF_SCRIPT, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_brief_script_prints_both_lines_twice_on_one_home(tmp_path):
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = first.stdout.strip().splitlines()
    assert lines[0] == "Filtered examples: 1"
    assert lines[1].startswith("Dataset created: ") and len(lines[1]) > len("Dataset created: ")
    assert (tmp_path / ".l07" / "l07.db").exists()
    # A second run on the same home re-filters the same example idempotently and builds the next version.
    second = _run(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.strip().splitlines()[0] == "Filtered examples: 1"


async def test_service_with_relay_and_worker_cleans_up_within_two_seconds(settings, bounded_cleanup):
    from L07_learning.services.learning_service import LearningService

    service = LearningService()
    await service.initialize()
    service.sft_engine.start_background_worker(poll_s=0.2)
    assert service.relay is not None and await service.db.ping()
    await bounded_cleanup(service.cleanup)
