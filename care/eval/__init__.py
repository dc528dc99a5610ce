"""Evaluation: SEED-Bench-R1 scoring, consistency judges and the results figure (no model work, no Prefect).

- :mod:`care.eval.scoring`: prediction rule, exact match, accuracy per level (:class:`LevelAccuracy`).
- :mod:`care.eval.intervals`: Wilson score intervals.
- :mod:`care.eval.judges`, :mod:`care.eval.llm_judge`, :mod:`care.eval.judge_config`: consistency judges
  ``rule``, ``reference_likelihood`` and ``llm`` behind one interface; :mod:`care.eval.reasoning` reads a
  completion for them.
- :mod:`care.eval.consistency`: consistency-rate summaries that name their judge.
- :mod:`care.eval.plots`: the results PNG.

The protocol and each judge are described in docs/evaluation.md.
"""
