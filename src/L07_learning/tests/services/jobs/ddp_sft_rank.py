"""One rank of the 2-process data-parallel SFT check (run under ``torchrun`` by ``test_sft.py``).

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_sft_rank.py MODEL_DIR OUT_DIR``.
Each rank trains through ``run_sft`` and saves its final LoRA weights as ``rank<R>.pt`` for the test to compare.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    import torch

    from L07_learning.models import JobConfig
    from L07_learning.pipelines.sft_pipeline import SFTCallbacks, run_sft
    from L07_learning.tests.factories.sft import tool_rows

    model_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ["RANK"])

    def save(model) -> None:  # type: ignore[no-untyped-def]
        state = {k: v.detach().cpu().clone() for k, v in model.named_parameters() if "lora_" in k}
        torch.save(state, out_dir / f"rank{rank}.pt")

    rows = tool_rows(16, seed=3)
    config = JobConfig(learning_rate=1e-3, batch_size=2, epochs=1, lora_rank=8, lora_alpha=16, max_seq_length=256,
                       gradient_checkpointing=False, eval_strategy="no", save_strategy="no", shuffle=True)
    run_sft(model_dir, rows, [], config, out_dir / "adapter", out_dir / "ckpt",
            callbacks=SFTCallbacks(on_train_end=save), measure_generation=False)


if __name__ == "__main__":
    main()
