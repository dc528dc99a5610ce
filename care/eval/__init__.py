"""Evaluation: the per-level evaluation stage, SEED-Bench-R1 scoring, consistency judges and the results figure
(no Prefect).

- :mod:`care.eval.evaluate`: the stage of one level (:func:`run_eval_level`). It does model work: it loads the
  evaluated model and its processor (and the likelihood model, when that is not the policy itself), generates
  one near-greedy completion per prompt and computes each completion's answer likelihood, then scores and judges
  the texts. :func:`score_level` is its model-free half (texts in, rows and summaries out).
- the stage's settings are ``care.eval_schema.EvalConfig``, the content id of the evaluated checkpoint is
  ``care.identity.content_id`` (both below ``care.eval``: the training package builds evaluation configs too).
- :mod:`care.eval.scoring`: prediction rule, exact match, accuracy per level (:class:`LevelAccuracy`).
- :mod:`care.eval.intervals`: Wilson score intervals.
- :mod:`care.eval.judges`, :mod:`care.eval.llm_judge`, :mod:`care.eval.judge_config` (``make_judge``): consistency judges
  ``rule``, ``reference_likelihood`` and ``llm`` behind one interface; :mod:`care.eval.reasoning` reads a
  completion for them. The judges load no model: ``reference_likelihood`` is handed likelihoods computed by the
  stage, ``llm`` asks an OpenAI-compatible HTTP endpoint.
- :mod:`care.eval.consistency`: consistency-rate summaries that name their judge.
- :mod:`care.eval.plots`: the results PNG.

The protocol and each judge are described in docs/evaluation.md.
"""
