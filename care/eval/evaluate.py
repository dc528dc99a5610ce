"""The evaluation stage of one level: generate near-greedy answers, score them, judge consistency, write Parquet.

For a level, :func:`run_eval_level` reads the validation samples whose media are in the frame cache (validation
rows keep their own option order), generates one completion per prompt in batches of ``batch_size``
(``encode_prompts`` + ``sample_completions`` with G = 1, vision and other special tokens suppressed), scores it
with the SEED-Bench-R1 rule (prediction = first answer tag or the whole output; exact letter match), computes
the CARE answer likelihood of each completion under ``likelihood_model`` (mean log-prob of the answer tokens
given the completion's own reasoning, not clamped), and runs every configured judge on it. One row per sample
goes to ``<out_dir>/<level>.parquet`` (written atomically); the returned manifest holds the level's accuracy
record and one consistency summary per judge, each naming its judge.

:func:`score_level` is the model-free half (texts in, rows and summaries out), so the scoring path can be
checked on hand-made completions.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from care.algo.answer_span import answer_token_masks
from care.algo.likelihood import answer_likelihood
from care.algo.prompt import prompt_template
from care.data.schema import Sample
from care.device import default_device, resolve_dtype
from care.errors import CareError
from care.eval.consistency import summarize_consistency
from care.eval.intervals import wilson_interval
from care.eval.judge_config import make_judge
from care.eval.judges import ConsistencyJudge, JudgeItem, Verdict, judge_label
from care.eval.scoring import DOMAIN_FIELD, OVERALL_LEVEL, eval_prediction, level_accuracy
from care.eval_schema import LIKELIHOOD_POLICY, LIKELIHOOD_REFERENCE, EvalConfig, likelihood_label
from care.failpoints import failpoint
from care.identity import model_path, reference_model_path
from care.media.frame_cache import FrameCache
from care.models.generation import Decoding, sample_completions
from care.models.inputs import encode_prompt_completions, encode_prompts, model_inputs
from care.models.loading import load_model, load_processor, stop_token_ids, suppressed_token_ids
from care.models.samples import DataSpec, prompt_items
from care.store.rollout_log import write_rows_atomic


@dataclass(frozen=True)
class Generated:
    """What the model produced for one sample: text, token count, cut-off, and its answer likelihood."""

    completion: str
    completion_tokens: int
    truncated: bool
    likelihood: float | None = None
    answer_logprob: float | None = None


BASE_COLUMNS = [
    ("run_id", pa.string()), ("label", pa.string()), ("level", pa.string()), ("sample_id", pa.string()),
    ("question", pa.string()), ("options", pa.list_(pa.string())), ("gold", pa.string()),
    ("prediction", pa.string()), ("correct", pa.bool_()), ("completion", pa.string()),
    ("completion_tokens", pa.int32()), ("truncated", pa.bool_()), ("likelihood", pa.float64()),
    ("answer_logprob", pa.float64()), ("likelihood_model", pa.string()), ("checkpoint", pa.string()),
    ("checkpoint_id", pa.string()), ("judge_labels", pa.list_(pa.string())), ("temperature", pa.float32()),
    ("top_p", pa.float32()), ("top_k", pa.int32()), ("max_new_tokens", pa.int32()), ("seed", pa.int64()),
    ("nframes", pa.int32()), ("prompt_version", pa.string()), ("prompt_template", pa.string()),
    ("domain", pa.string()),
]


def predictions_schema(judge_names: Sequence[str]) -> pa.Schema:
    """The Parquet schema: base columns, then per judge ``<name>_consistent`` (null = unjudged),
    ``<name>_code`` and ``<name>_reason``."""
    judge_columns = []
    for name in judge_names:
        judge_columns += [(f"{name}_consistent", pa.bool_()), (f"{name}_code", pa.string()),
                          (f"{name}_reason", pa.string())]
    return pa.schema(BASE_COLUMNS + judge_columns)


def predictions_path(out_dir: str | Path, level: str) -> Path:
    return Path(out_dir) / f"{level}.parquet"


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def score_level(
    *, level: str, samples: Sequence[Sample], generated: Sequence[Generated], judges: Sequence[ConsistencyJudge],
    context: dict, confidence: float = 0.95,
) -> tuple[list[dict], dict, list[dict]]:
    """Rows, the accuracy record and one consistency summary per judge for one level's completions.

    ``context`` holds the per-evaluation columns (run_id, label, checkpoint, checkpoint_id, decoding, ...).
    """
    if len(samples) != len(generated):
        raise ValueError(f"{len(samples)} samples but {len(generated)} completions")
    items = [JudgeItem(completion=g.completion, options=tuple(s.options), question=s.question,
                       likelihood=_finite_or_none(g.likelihood), sample_id=s.sample_id)
             for s, g in zip(samples, generated, strict=True)]
    verdicts = {j.name: j.judge(items) for j in judges}
    labels = [judge_label(j) for j in judges]
    rows = []
    for i, (s, g) in enumerate(zip(samples, generated, strict=True)):
        prediction = eval_prediction(g.completion)
        row = {**context, "level": level, "domain": sample_domain(s), "sample_id": s.sample_id, "question": s.question,
               "options": list(s.options), "gold": s.answer, "prediction": prediction,
               "correct": prediction == s.answer, "completion": g.completion,
               "completion_tokens": g.completion_tokens, "truncated": g.truncated,
               "likelihood": _finite_or_none(g.likelihood), "answer_logprob": _finite_or_none(g.answer_logprob),
               "judge_labels": labels}
        for name, vs in verdicts.items():
            row |= {f"{name}_consistent": vs[i].consistent, f"{name}_code": vs[i].code,
                    f"{name}_reason": vs[i].reason}
        rows.append(row)
    accuracy = level_accuracy(level, [r["correct"] for r in rows], confidence).as_dict()
    summaries = [summarize_consistency(j, verdicts[j.name], level, confidence).as_dict() for j in judges]
    return rows, accuracy, summaries


def sample_domain(sample: Sample) -> str | None:
    """The row's ``domain`` field, when its annotation has one (EgoPlan-Bench2's, which SEED-Bench-R1's L3 is
    built from: Daily life, Hobbies, Recreation, Work); None otherwise."""
    value = sample.meta.get("extra", {}).get(DOMAIN_FIELD)
    return str(value) if value not in (None, "") else None


def domain_records(level: str, rows: Sequence[dict], judges: Sequence[ConsistencyJudge],
                   confidence: float = 0.95) -> list[dict]:
    """Per-domain records of one level (``level`` ``"L3/Hobbies"``, ...): accuracy and each judge's consistency
    over the level's rows of that domain, in :func:`score_level`'s record shapes. Empty when no row has a domain.

    >>> from care.eval.judges import RuleJudge
    >>> rows = [{"domain": "Work", "correct": True, "rule_consistent": True, "rule_code": "judged", "rule_reason": ""},
    ...         {"domain": "Work", "correct": False, "rule_consistent": None, "rule_code": "no_think", "rule_reason": ""},
    ...         {"domain": None, "correct": True, "rule_consistent": True, "rule_code": "judged", "rule_reason": ""}]
    >>> [(r["level"], r["accuracy"]["n"], r["consistency"][0]["n_judged"]) for r in domain_records("L3", rows, [RuleJudge()])]
    [('L3/Work', 2, 1)]
    """
    domains = sorted({r["domain"] for r in rows if r.get("domain")})
    records = []
    for domain in domains:
        name = f"{level}/{domain}"
        subset = [r for r in rows if r.get("domain") == domain]
        verdicts = {j.name: [Verdict(r[f"{j.name}_consistent"], r[f"{j.name}_code"], r[f"{j.name}_reason"])
                             for r in subset] for j in judges}
        records.append({"level": name,
                        "accuracy": level_accuracy(name, [r["correct"] for r in subset], confidence).as_dict(),
                        "consistency": [summarize_consistency(j, verdicts[j.name], name, confidence).as_dict()
                                        for j in judges]})
    return records


def _to_device(enc, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.items()}


@torch.no_grad()
def answer_likelihoods(model, processor, items, rates, completion_ids) -> tuple[list[float], list[float]]:
    """(p, mean log-prob) of each completion's answer tokens under ``model``; NaN where there is no answer span.

    ``p`` = exp(mean log-prob of the first answer tag's content tokens), not clamped (the training bonus clamps
    at 0.95; a judge threshold below 1 reads the same verdicts either way).
    """
    batch = encode_prompt_completions(processor, items, completion_ids, fps=rates)
    span = answer_token_masks(batch["completion_ids"], batch["completion_mask"], processor.tokenizer)
    target = torch.cat([torch.zeros(len(items), batch["prompt_length"], dtype=torch.bool), span], dim=1)
    device = next(model.parameters()).device
    out = answer_likelihood(model, _to_device(model_inputs(batch), device), target.to(device), upper_bound=1.0,
                            shared_prompts=batch["shared_prompts"])
    return out.p.float().cpu().tolist(), out.mean_logp.float().cpu().tolist()


def _decoding(config: EvalConfig) -> Decoding:
    d = config.decoding
    return Decoding(temperature=d.temperature or 1.0, top_p=d.top_p, top_k=d.top_k,
                    max_new_tokens=d.max_new_tokens, do_sample=d.temperature > 0)


def load_likelihood_model(config: EvalConfig, policy, processor, device, dtype):
    """The model that scores answer likelihoods; it must share the policy's tokenizer (same token ids)."""
    if config.likelihood_model == LIKELIHOOD_POLICY:
        return policy
    if config.likelihood_model == LIKELIHOOD_REFERENCE:  # saved weights only; it shares the policy's tokenizer
        return load_model(reference_model_path(config.checkpoint), dtype=dtype, device=device)
    path = config.likelihood_model
    if load_processor(path).tokenizer.get_vocab() != processor.tokenizer.get_vocab():
        raise CareError(f"likelihood_model {path}: its tokenizer differs from the evaluated model's; the "
                        "likelihood model must score the same token ids (use the same model family)")
    return load_model(path, dtype=dtype, device=device)


def generate_level(config: EvalConfig, samples: Sequence[Sample], cache: FrameCache) -> list[Generated]:
    """One near-greedy completion per sample, with its answer likelihood, in batches of ``batch_size``."""
    device = default_device()
    dtype = resolve_dtype("auto", device)
    model = load_model(model_path(config.checkpoint), dtype=dtype, device=device)
    processor = load_processor(model_path(config.checkpoint))
    scorer = load_likelihood_model(config, model, processor, device, dtype)
    tok = processor.tokenizer
    stop = stop_token_ids(processor, config.decoding.eos)
    suppress, decoding = suppressed_token_ids(processor, stop=stop), _decoding(config)
    template = prompt_template(config.prompt_name(), "eval")
    out: list[Generated] = []
    for k, start in enumerate(range(0, len(samples), config.batch_size)):
        items, rates = prompt_items(samples[start : start + config.batch_size], cache, template=template)
        enc = _to_device(encode_prompts(processor, items, fps=rates), device)
        completions = sample_completions(model, enc, tok, group_size=1, decoding=decoding,
                                         seed=config.decoding.seed + k, eos_token_ids=stop,
                                         pad_token_id=tok.pad_token_id, suppress_token_ids=suppress)
        p, logp = answer_likelihoods(scorer, processor, items, rates, [c.token_ids for c in completions])
        out += [Generated(c.text, len(c.token_ids), c.truncated, p[i], logp[i]) for i, c in enumerate(completions)]
    return out


def eval_context(config: EvalConfig, *, run_id: str, label: str, checkpoint_id: str) -> dict:
    """Columns every row of one evaluation shares (who, what, how it was decoded)."""
    d = config.decoding
    return {"run_id": run_id, "label": label, "checkpoint": config.checkpoint, "checkpoint_id": checkpoint_id,
            "likelihood_model": likelihood_label(config.likelihood_model), "temperature": d.temperature,
            "top_p": d.top_p, "top_k": d.top_k, "max_new_tokens": d.max_new_tokens, "seed": d.seed,
            "nframes": config.frames.nframes, **prompt_columns(config)}


def prompt_columns(config: EvalConfig) -> dict:
    """The prompt template an evaluation's prompts are built from: its version and id (``name@version``)."""
    template = prompt_template(config.prompt_name(), "eval")
    return {"prompt_version": template.version, "prompt_template": template.template_id}


def run_eval_level(config: EvalConfig, level: str, *, cache_root: str | Path, out_dir: str | Path, run_id: str,
                   checkpoint_id: str) -> dict:
    """Evaluate ``level``; write ``<out_dir>/<level>.parquet``; return the level's manifest."""
    started = time.perf_counter()
    data = DataSpec(data_root=config.data_root, annotation_file=config.annotation_file(level),
                    cache_root=str(cache_root), sampling=config.frames, shuffle_options=False,
                    benchmark=config.benchmark)
    sample_set = data.load()
    samples = sample_set.samples[: config.limit_per_level]
    generated = generate_level(config, samples, data.cache())
    judges = [make_judge(j) for j in config.judge_configs()]
    label = config.resolved_label()
    context = eval_context(config, run_id=run_id, label=label, checkpoint_id=checkpoint_id)
    rows, accuracy, consistency = score_level(level=level, samples=samples, generated=generated, judges=judges,
                                              context=context, confidence=config.confidence)
    accuracy["prompt_template"] = context["prompt_template"]  # recorded with the level's eval_results rows
    groups = domain_records(level, rows, judges, config.confidence)
    for g in groups:
        g["accuracy"]["prompt_template"] = context["prompt_template"]
    failpoint("evaluation")  # crash tests: killed after generation and scoring, before the Parquet is written
    path = write_rows_atomic(predictions_path(out_dir, level), rows, predictions_schema([j.name for j in judges]))
    return {
        "run_id": run_id, "label": label, "level": level, "checkpoint": config.checkpoint,
        "checkpoint_id": checkpoint_id, "path": str(path), "n": len(rows), "accuracy": accuracy,
        "consistency": consistency, "groups": groups, "excluded": len(sample_set.excluded), "rejected_rows": sample_set.rejected_rows,
        "truncated": sum(r["truncated"] for r in rows), "seconds": time.perf_counter() - started,
    }


def overall_record(manifests: Sequence[dict], confidence: float = 0.95) -> dict:
    """The ``"all"`` pseudo-level over per-level manifests: pooled accuracy and pooled consistency per judge
    (sums of counts, fresh Wilson intervals; unjudged reasons added up)."""
    n = sum(m["accuracy"]["n"] for m in manifests)
    k = sum(m["accuracy"]["correct"] for m in manifests)
    low, high = wilson_interval(k, n, confidence)
    accuracy = {"level": OVERALL_LEVEL, "n": n, "correct": k, "accuracy": k / n if n else math.nan,
                "ci_low": low, "ci_high": high, "confidence": confidence}
    templates = {m["accuracy"].get("prompt_template") for m in manifests}
    if len(templates) == 1 and None not in templates:  # the pooled rows name the levels' one template
        accuracy["prompt_template"] = templates.pop()
    pooled: dict[str, dict] = {}
    for m in manifests:
        for s in m["consistency"]:
            acc = pooled.setdefault(s["judge_label"], {**s, "level": OVERALL_LEVEL, "n": 0, "n_judged": 0,
                                                       "n_unjudged": 0, "n_consistent": 0, "unjudged_reasons": {}})
            for key in ("n", "n_judged", "n_unjudged", "n_consistent"):
                acc[key] += s[key]
            acc["unjudged_reasons"] = dict(Counter(acc["unjudged_reasons"]) + Counter(s["unjudged_reasons"]))
    for s in pooled.values():
        s["ci_low"], s["ci_high"] = wilson_interval(s["n_consistent"], s["n_judged"], confidence)
        s["rate"] = s["n_consistent"] / s["n_judged"] if s["n_judged"] else math.nan
        s["unjudged_reasons"] = dict(sorted(s["unjudged_reasons"].items()))
    return {"level": OVERALL_LEVEL, "accuracy": accuracy, "consistency": list(pooled.values())}


def results_rows(records: Sequence[dict]) -> list[dict]:
    """One flat row per level (per-level manifests and/or :func:`overall_record`): level, n, accuracy with its
    interval, then ``consistency[<judge label>]`` as rate with interval and judged / unjudged counts."""
    rows = []
    for m in records:
        a = m["accuracy"]
        row = {"level": a["level"], "n": a["n"], "correct": a["correct"], "accuracy": a["accuracy"],
               "ci_low": a["ci_low"], "ci_high": a["ci_high"]}
        for s in m["consistency"]:
            row[f"consistency[{s['judge_label']}]"] = {
                "rate": s["rate"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n_judged": s["n_judged"],
                "n_unjudged": s["n_unjudged"]}
        rows.append(row)
    return rows
