"""Training every stage: the LoRA / full fine-tuning loop (peft + accelerate) with a task per
stage, and the trainers of the CLIP, LiT, Q-Former, hash and captioner models.

``vistrieve train <stage>`` and ``vistrieve finetune <stage>`` call these functions.
"""

from __future__ import annotations

from vistrieve.training.finetune import (
    STAGES,
    FinetuneConfig,
    FinetuneTask,
    finetune,
    save_finetuned,
)

__all__ = ["STAGES", "FinetuneConfig", "FinetuneTask", "finetune", "save_finetuned"]
