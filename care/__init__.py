"""care: GRPO-CARE post-training of video vision-language models.

The library layer. Nothing in ``care`` imports Prefect; orchestration lives in ``tasks/`` and ``flows/``.
"""

__version__ = "0.1.0"
