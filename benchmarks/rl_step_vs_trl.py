"""One GRPO step, ours vs TRL's ``GRPOTrainer``, on the same tiny Qwen2.5-VL, prompts and settings.

What is the same on both sides: the tiny checkpoint (``care.models.tiny.make_tiny_model`` on the demo corpus), the
image-only prompts of the demo training set (TRL's GRPO takes images, not videos), G completions per prompt,
P prompts per step, exactly ``--max-new`` new tokens per completion (``min_new_tokens`` = ``max_new_tokens``, so
EOS cannot end a completion early and both sides process the same token counts), temperature 1 / top-p 0.95 /
top-k 50, one AdamW step per generation batch over all P*G rollouts in one micro-batch, no KL, the per-sequence
token-mean loss (TRL ``loss_type="grpo"``), group-std advantages, constant learning rate, fp32 on CPU.

What differs (by design of each system, reported, not hidden):
- ours computes behaviour log-probs in the rollout stage (stored in the rollout log for PPO steps and audits);
  TRL skips them when generation and optimisation are aligned;
- ours scores every rollout under the reference model (the GRPO-CARE consistency likelihood); TRL with beta=0
  has no reference model at all;
- ours runs each stage as a function of checkpoint paths (load, work, write Parquet / checkpoint), as the
  Prefect flow does, so a crash loses at most one stage; TRL keeps one model in memory and writes nothing.

Phases: ``generation`` (prompt encoding + sampling), ``scoring`` (log-probs + rewards + reference likelihood),
``update`` (forward, backward, optimizer step; for ours also loading and checkpoint writing), ``step`` (wall time
of the whole step). Each system runs in its own subprocess (peak RSS per phase from a psutil sampler), the two
are interleaved A/B over ``--reps`` repetitions with the order swapped each time, and medians are reported.

    python benchmarks/rl_step_vs_trl.py                 # ~3 min on 2 cores
    python benchmarks/rl_step_vs_trl.py --json          # also writes benchmarks/results/rl_step_vs_trl.json
    python benchmarks/rl_step_vs_trl.py --video-only    # ours with videos: frame cache vs decord per step
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ACCELERATE_DISABLE_RICH", "1")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PHASES = ("generation", "scoring", "update", "step")


# ----------------------------------------------------------------------------------------------- measurement
class PhaseMeter:
    """Wall time and peak RSS per named phase; a background thread samples RSS every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self._proc = psutil.Process()
        self.phase = "idle"
        self.peak: dict[str, int] = {}
        self.seconds: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        rss = self._proc.memory_info().rss
        for name in (self.phase, "step"):
            if rss > self.peak.get(name, 0):
                self.peak[name] = rss

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(interval)

    @contextlib.contextmanager
    def measure(self, name: str):
        previous, self.phase = self.phase, name
        self._sample()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds.setdefault(name, []).append(time.perf_counter() - t0)
            self._sample()
            self.phase = previous

    def add(self, name: str, seconds: float) -> None:
        self.seconds.setdefault(name, []).append(seconds)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _summary(meter: PhaseMeter, warmup: int, samples: int, tokens: int) -> dict:
    """Median seconds per phase over the timed steps, and samples/s, tokens/s, peak RSS (MiB) per phase."""
    out = {}
    for name in PHASES:
        times = meter.seconds.get(name, [])[warmup:]
        if not times:
            continue
        sec = statistics.median(times)
        out[name] = {"seconds": sec, "samples_per_s": samples / sec, "tokens_per_s": tokens / sec,
                     "peak_rss_mib": meter.peak.get(name, 0) / 2**20}
    return out


# --------------------------------------------------------------------------------------------------- setup
IMAGE_PIXELS = 56 * 56  # the frame cache's default largest image size


def _sampling(nframes: int, image_pixels: int):
    """Frame sampling of the benchmark's cache: ``image_pixels`` other than the default fixes the image size
    (resized up or down to about that many pixels), which sets the prompt length."""
    from care.media.sampling import FrameSampling

    if image_pixels == IMAGE_PIXELS:
        return FrameSampling(nframes=nframes)
    return FrameSampling(nframes=nframes, image_min_pixels=image_pixels, image_max_pixels=image_pixels)


def prepare(workdir: Path, *, max_new: int, nframes: int = 4, image_pixels: int = IMAGE_PIXELS) -> dict:
    """Demo set, tiny model (generating exactly ``max_new`` tokens), frame cache; built once per workdir."""
    marker = workdir / f"ready-{max_new}-{nframes}-{image_pixels}.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    from care.data.demo import benchmark_corpus, demo_corpus, make_demo_benchmark
    from care.media.frame_cache import FrameCache
    from care.models.tiny import make_tiny_model
    from care.train.checkpoint import make_initial_checkpoint

    demo = workdir / "demo"
    if not (demo / "annotations").is_dir():
        make_demo_benchmark(demo, train=48, val=8, seed=0)
    model = workdir / "tiny"
    if not (model / "config.json").is_file():
        make_tiny_model(model, corpus=benchmark_corpus(demo) + demo_corpus(), seed=0)
    gen_cfg = json.loads((model / "generation_config.json").read_text())
    gen_cfg["min_new_tokens"] = max_new  # equal completion lengths on both sides: EOS cannot end one early
    tag = f"len{max_new}" + ("" if image_pixels == IMAGE_PIXELS else f"-px{image_pixels}")
    folder = workdir / f"tiny-{tag}"
    if not folder.is_dir():
        import shutil

        shutil.copytree(model, folder)
    (folder / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2))
    if image_pixels != IMAGE_PIXELS:  # the processor's own cap would shrink the images back: raise it
        proc_cfg = json.loads((folder / "processor_config.json").read_text())
        proc_cfg["image_processor"]["size"]["longest_edge"] = image_pixels
        (folder / "processor_config.json").write_text(json.dumps(proc_cfg, indent=2))
    ck0 = workdir / f"ck0-{tag}"
    if not ck0.is_dir():
        make_initial_checkpoint(folder, ck0)
    sampling = _sampling(nframes, image_pixels)
    cache_root = workdir / f"cache-{nframes}-{image_pixels}"
    cache = FrameCache(cache_root, sampling, demo)
    from care.data.annotations import load_annotations

    for s in load_annotations(demo / "annotations" / "training_6k.jsonl", demo, shuffle_options=False).samples:
        if s.video and not cache.contains(s):
            cache.put(demo / s.video, "video")
        cache.put(demo / s.image, "image")
    info = {"demo": str(demo), "model": str(folder), "ck0": str(ck0), "cache": str(cache_root), "nframes": nframes,
            "image_pixels": image_pixels}
    marker.write_text(json.dumps(info))
    return info


def load_samples(info: dict, n: int, *, video: bool):
    """The first ``n`` demo training samples; image-only unless ``video`` (then only samples with a video)."""
    from care.media.frame_cache import FrameCache
    from care.models.samples import load_sample_set

    cache = FrameCache(info["cache"], _sampling(info.get("nframes", 4), info.get("image_pixels", IMAGE_PIXELS)),
                       info["demo"])
    samples = load_sample_set(info["demo"], "training_6k.jsonl", cache, shuffle_options=False).samples
    if video:
        picked = [s for s in samples if s.video][:n]
    else:
        picked = [dataclasses.replace(s, video=None) for s in samples[:n]]
    if len(picked) < n:
        raise SystemExit(f"the demo set has only {len(picked)} usable samples, {n} asked")
    return picked, cache


class DecodingCache:
    """A ``FrameCache`` stand-in that decodes every video (decord) and image again on each load."""

    def __init__(self, cache):
        self.cache = cache

    def load(self, sample):
        from care.media.decode import decode_video, load_image
        from care.media.frame_cache import CachedSample

        frames = fps = ts = None
        if sample.video:
            d = decode_video(self.cache.resolve(sample.video), self.cache.sampling, prefer="decord")
            frames, fps, ts = d.frames, d.sample_fps, d.timestamps
        image = load_image(self.cache.resolve(sample.image), self.cache.sampling)
        return CachedSample(sample_id=sample.sample_id, frames=frames, timestamps=ts, fps=fps, image=image)

    def contains(self, sample):
        return self.cache.contains(sample)


# ----------------------------------------------------------------------------------------------------- ours
def run_ours(info: dict, a: argparse.Namespace, meter: PhaseMeter, *, video: bool = False,
             decode: bool = False) -> None:
    """``a.warmup + a.steps`` RL iterations through the rollout, scoring and optimisation stage functions."""
    import torch

    import care.train.rollout as rollout_mod
    from care.models.rollout_config import RolloutConfig, SamplingParams
    from care.train.config import OptimConfig, ScoringConfig
    from care.train.optimise import load_scored_batch
    from care.train.optimise_stage import optimise
    from care.train.rollout import run_rollout_stage
    from care.train.scoring import run_scoring_stage

    torch.manual_seed(0)
    samples, cache = load_samples(info, a.prompts * (a.warmup + a.steps), video=video)
    source = DecodingCache(cache) if decode else cache
    by_id = {s.sample_id: s for s in samples}
    # one optimizer step per generation batch: the RL config resolves behaviour log-probs to the sampler's
    rollout_cfg = RolloutConfig(group_size=a.G, prompts_per_iteration=a.prompts, generation_batch_prompts=a.prompts,
                                behaviour_logprobs="sampler",
                                sampling=SamplingParams(max_new_tokens=a.max_new, temperature=1.0, top_p=0.95,
                                                        top_k=50))
    optim_cfg = OptimConfig(learning_rate=a.lr, micro_batch_size=a.G * a.prompts, lr_scheduler="constant",
                            max_grad_norm=5.0, weight_decay=0.01)
    behaviour = rollout_mod.behaviour_logprobs

    def timed_behaviour(*args, **kwargs):  # a behaviour log-prob forward pass is scoring work, not generation
        t0 = time.perf_counter()
        out = behaviour(*args, **kwargs)
        meter.add("rollout_logprobs", time.perf_counter() - t0)
        return out

    rollout_mod.behaviour_logprobs = timed_behaviour  # only called with behaviour_logprobs="forward"
    root = Path(tempfile.mkdtemp(prefix="care-bench-"))
    ck = Path(info["ck0"])
    for it in range(a.warmup + a.steps):
        batch = samples[it * a.prompts : (it + 1) * a.prompts]
        out = root / f"it{it}"
        t_step = time.perf_counter()
        with meter.measure("generation"):
            gen = run_rollout_stage(run_id="bench", iteration=it, checkpoint=ck, samples=batch, cache=source,
                                    config=rollout_cfg, seed=0, out_dir=out)
        lp = meter.seconds["rollout_logprobs"].pop() if meter.seconds.get("rollout_logprobs") else 0.0
        meter.seconds["generation"][-1] -= lp
        with meter.measure("scoring"):
            sc = run_scoring_stage(generated_path=gen["path"], checkpoint=ck, samples=by_id, cache=source,
                                   config=ScoringConfig(), algo="grpo_care")
        meter.seconds["scoring"][-1] += lp
        with meter.measure("update"):
            rows = load_scored_batch(gen["path"], sc["path"])
            res = optimise(checkpoint_in=ck, checkpoint_out=root / f"ck{it + 1}", rows=rows, samples=by_id,
                           cache=source, config=optim_cfg, total_steps=a.warmup + a.steps, temperature=1.0,
                           max_new_tokens=a.max_new, iteration=it)
        meter.add("step", time.perf_counter() - t_step)
        ck = Path(res["checkpoint"])
        tokens = [len(r["completion_ids"]) for r in rows]
        meter.add("tokens", float(sum(tokens)))
        meter.add("prompt_tokens", statistics.mean(r["prompt_tokens"] for r in rows))


# ------------------------------------------------------------------------------------------------------ TRL
def _reward_fn(weights):
    from care.algo.rewards import combine_rewards

    def care_reward(completions, gold, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        texts = [t if isinstance(t, str) else "".join(p.get("text", "") for p in t) for t in texts]
        return combine_rewards(texts, gold, weights).total

    return care_reward


def run_trl(info: dict, a: argparse.Namespace, meter: PhaseMeter) -> None:
    """The same steps through ``trl.GRPOTrainer`` (its own loop, dataset, sampler), phases timed by wrapping."""
    import numpy as np
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from care.algo.prompt import build_messages

    torch.manual_seed(0)
    samples, cache = load_samples(info, a.prompts * (a.warmup + a.steps), video=False)
    rows = []
    for s in samples:
        media = cache.load(s)
        rows.append({"prompt": build_messages(s.question, s.options, has_video=False, has_image=True),
                     "image": Image.fromarray(np.asarray(media.image)), "gold": s.answer})
    dataset = Dataset.from_list(rows)
    policy = Path(info["model"])
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(policy), dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(str(policy))
    n = a.G * a.prompts
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=n, num_generations=a.G,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=a.max_new, generation_kwargs={"min_new_tokens": a.max_new},
        temperature=1.0, top_p=0.95, top_k=50, beta=0.0, loss_type="grpo", scale_rewards="group",
        learning_rate=a.lr, lr_scheduler_type="constant", weight_decay=0.01, max_grad_norm=5.0,
        max_steps=a.warmup + a.steps, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, seed=0, dataloader_num_workers=0, remove_unused_columns=False, shuffle_dataset=False,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=[_reward_fn(None)],
                          args=config, train_dataset=dataset)
    generate, score = trainer._generate, trainer._generate_and_score_completions
    marks: dict[str, float] = {}

    def timed_generate(*args, **kwargs):
        t0 = time.perf_counter()
        meter.phase = "generation"
        out = generate(*args, **kwargs)
        marks["generation"] = time.perf_counter() - t0
        meter.phase = "scoring"
        return out

    def timed_score(*args, **kwargs):
        t0 = time.perf_counter()
        out = score(*args, **kwargs)
        marks["generate_and_score"] = time.perf_counter() - t0
        marks["tokens"] = float(out["completion_mask"].sum())
        meter.phase = "update"
        return out

    trainer._generate, trainer._generate_and_score_completions = timed_generate, timed_score

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            marks.clear()
            marks["t0"] = time.perf_counter()
            meter.phase = "generation"

        def on_step_end(self, args, state, control, **kw):
            total = time.perf_counter() - marks["t0"]
            meter.add("generation", marks["generation"])
            meter.add("scoring", marks["generate_and_score"] - marks["generation"])
            meter.add("update", total - marks["generate_and_score"])
            meter.add("step", total)
            meter.add("tokens", marks["tokens"])
            meter.phase = "idle"

    trainer.add_callback(StepTimer())
    trainer.train()


# --------------------------------------------------------------------------------------------------- driver
def worker(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    info = json.loads(Path(a.info).read_text())
    meter = PhaseMeter()
    if a.worker == "trl":
        run_trl(info, a, meter)
    else:
        run_ours(info, a, meter, video=a.worker.startswith("video"), decode=a.worker == "video-decode")
    meter.close()
    tokens = statistics.median(meter.seconds["tokens"][a.warmup:])
    result = _summary(meter, a.warmup, a.G * a.prompts, int(tokens))
    result["completion_tokens_per_step"] = tokens
    if "prompt_tokens" in meter.seconds:  # ours records the encoded prompt length of its rollouts
        result["prompt_tokens_per_rollout"] = statistics.median(meter.seconds["prompt_tokens"])
    result["process_peak_rss_mib"] = max(meter.peak.values()) / 2**20
    Path(a.out).write_text(json.dumps(result))


def spawn(system: str, info_path: Path, a: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, __file__, "--worker", system, "--info", str(info_path), "--out", str(out),
           "--G", str(a.G), "--prompts", str(a.prompts), "--max-new", str(a.max_new), "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--lr", str(a.lr), "--threads", str(a.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{system} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    return result


def _med(runs: list[dict], phase: str, key: str) -> float:
    return statistics.median(r[phase][key] for r in runs)


def _spread(runs: list[dict], phase: str, key: str) -> tuple[float, float]:
    values = [r[phase][key] for r in runs]
    return min(values), max(values)


def compare(a_runs: list[dict], b_runs: list[dict], a_name: str, b_name: str) -> dict:
    """Medians over repetitions per phase for both, and the ratios a/b (throughput and peak RSS)."""
    table = {}
    for phase in PHASES:
        if phase not in a_runs[0] or phase not in b_runs[0]:
            continue
        row = {}
        for name, runs in ((a_name, a_runs), (b_name, b_runs)):
            row[name] = {k: _med(runs, phase, k) for k in ("seconds", "samples_per_s", "tokens_per_s", "peak_rss_mib")}
            row[name]["seconds_min_max"] = _spread(runs, phase, "seconds")
        row["throughput_ratio"] = row[a_name]["samples_per_s"] / row[b_name]["samples_per_s"]
        row["peak_rss_ratio"] = row[a_name]["peak_rss_mib"] / row[b_name]["peak_rss_mib"]
        table[phase] = row
    return table


def print_table(table: dict, a_name: str, b_name: str, title: str) -> None:
    print(f"\n{title}")
    print(f"{'phase':<11} {a_name + ' s':>10} {b_name + ' s':>10} {a_name + ' smp/s':>12} {b_name + ' smp/s':>12} "
          f"{a_name + ' tok/s':>11} {b_name + ' tok/s':>11} {'thr ratio':>9} {a_name + ' MiB':>9} "
          f"{b_name + ' MiB':>9} {'mem ratio':>9}")
    for phase, row in table.items():
        x, y = row[a_name], row[b_name]
        print(f"{phase:<11} {x['seconds']:>10.3f} {y['seconds']:>10.3f} {x['samples_per_s']:>12.1f} "
              f"{y['samples_per_s']:>12.1f} {x['tokens_per_s']:>11.0f} {y['tokens_per_s']:>11.0f} "
              f"{row['throughput_ratio']:>9.2f} {x['peak_rss_mib']:>9.0f} {y['peak_rss_mib']:>9.0f} "
              f"{row['peak_rss_ratio']:>9.2f}")


def machine() -> dict:
    import platform

    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__}


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "transformers", "accelerate", "trl")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--G", type=int, default=4, help="completions per prompt")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--max-new", type=int, default=32, help="completion length (forced equal)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps per run")
    ap.add_argument("--reps", type=int, default=5, help="A/B repetitions (order swapped each time)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--image-pixels", type=int, default=IMAGE_PIXELS,
                    help="pixel count the prompt image is resized to (more pixels: longer prompts; default: the "
                         "frame cache's default size)")
    ap.add_argument("--name", default="rl_step_vs_trl", help="results file: benchmarks/results/<name>.json")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--workdir", default=None, help="reuse a prepared folder (default: a temp folder)")
    ap.add_argument("--json", action="store_true", help="write benchmarks/results/rl_step_vs_trl.json")
    ap.add_argument("--video-only", action="store_true", help="only ours with videos: cache vs decode")
    ap.add_argument("--skip-video", action="store_true", help="skip the video cache-vs-decode comparison")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--info", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    import importlib.util

    missing = [m for m in ("trl", "datasets", "psutil") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: install the bench extra (`make bench` does, or "
                         "`.venv/bin/pip install -e '.[bench]'`)")
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="care-rlbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    info_path = workdir / f"info-{a.max_new}-{a.image_pixels}.json"
    info_path.write_text(json.dumps(prepare(workdir, max_new=a.max_new, image_pixels=a.image_pixels)))
    settings = {k: getattr(a, k) for k in ("G", "prompts", "max_new", "steps", "warmup", "reps", "lr", "threads",
                                           "image_pixels")}
    report: dict = {"settings": settings, "machine": machine(), "versions": versions()}
    if not a.video_only:
        ours, trl = [], []
        for rep in range(a.reps):
            order = ("ours", "trl") if rep % 2 == 0 else ("trl", "ours")
            for system in order:
                (ours if system == "ours" else trl).append(spawn(system, info_path, a))
            print(f"rep {rep + 1}/{a.reps}: step ours {ours[-1]['step']['seconds']:.3f} s, "
                  f"TRL {trl[-1]['step']['seconds']:.3f} s", flush=True)
        table = compare(ours, trl, "ours", "trl")
        print_table(table, "ours", "trl", f"ours vs TRL GRPOTrainer, medians of {a.reps} runs x {a.steps} steps "
                    f"(G={a.G}, P={a.prompts}, {a.max_new} tokens per completion, image prompts)")
        report["ours_vs_trl"] = table
        report["prompt_tokens_per_rollout"] = statistics.median(r["prompt_tokens_per_rollout"] for r in ours)
        print(f"prompt tokens per rollout: {report['prompt_tokens_per_rollout']:.0f}")
        report["runs"] = {"ours": ours, "trl": trl}
    if not a.skip_video:
        cached, decoded = [], []
        for rep in range(a.reps):
            order = ("video-cache", "video-decode") if rep % 2 == 0 else ("video-decode", "video-cache")
            for system in order:
                (cached if system == "video-cache" else decoded).append(spawn(system, info_path, a))
        table = compare(cached, decoded, "cache", "decode")
        print_table(table, "cache", "decode", "ours with video prompts: frame cache vs decord decoding each step")
        report["video_cache_vs_decode"] = table
    if a.json:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{a.name}.json"
        if a.video_only and path.is_file():
            report = {**json.loads(path.read_text()), "video_cache_vs_decode": report["video_cache_vs_decode"]}
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
