"""The GRPO-CARE algorithm as pure functions on strings and tensors (no IO, no Prefect).

One concept per module:

* ``prompt``: the versioned SEED-Bench-R1 prompt and chat messages.
* ``rewards``: answer extraction, accuracy and format rewards, a reward registry and weighted combination.
* ``answer_span``: the answer tokens of a sampled completion (first tag [ours] or the reference span).
* ``likelihood``: per-token log-probs with the LM head applied only where needed; the reference likelihood.
* ``consistency``: the per-group consistency bonus (``reproduce_reference``: per device batch, float32).
* ``advantages``: estimator registry (grpo, grpo_care, dr_grpo, rloo), zero-variance groups reported.
* ``losses``: policy loss with aggregation modes, PPO clipping, optional KL (k1/k3), metrics.
* ``ema``: the EMA / frozen reference update (plain, DDP and FSDP2 modules).

GRPO-CARE has no KL term: the EMA reference is used only for the consistency likelihood.
"""
