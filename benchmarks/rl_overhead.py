"""Where an RL iteration's wall time goes: compute (generation, reference forward, update) against overhead
(process starts, model and optimizer loads, checkpoint writes, Prefect bookkeeping), for the design before the
resident gang and for this checkout, at ``optim.num_processes`` 1 and 2.

Each measurement is a real ``rl`` flow (Prefect, a private server per worker process, the DuckDB catalog) on the
demo shape (G=8, P=4, 48 new tokens, micro-batch 32, the tiny Qwen2.5-VL on CPU, a checkpoint every 10
iterations), run by a worker subprocess whose ``import care`` is the tree under test: this checkout, or
``git archive`` of the baseline revision (default: the last commit before the gang). Interleaved A/B, order
swapped every repetition.

- **iteration wall**: the flow's own per-iteration seconds (what its summary line prints);
- **generation**: sampling plus behaviour log-probs, measured where it runs: timers around
  ``sample_completions`` / ``behaviour_logprobs`` in the flow's process, or the ranks' own compute seconds
  (``generation_seconds`` in the catalog's metrics, slowest rank) when the gang runs them;
- **reference forward**: ``reference_likelihoods`` (or the catalog's ``reference_forward_seconds``);
- **update**: forward, backward and optimizer step (``update_seconds`` from the catalog, rank 0);
- **overhead** = wall - compute, split into *inside stages* (stage task seconds from the catalog's ``stages``
  table minus compute: model and optimizer (re)loads, process starts, checkpoint writes, Parquet IO) and
  *between stages* (wall - the stages: Prefect orchestration, catalog writes, the flow's own work);
- **process launches** per iteration (``subprocess.Popen`` calls: torchrun gangs, workers).

The first iteration (model load, the gang's start) is reported apart; the others are the steady state.

    python benchmarks/rl_overhead.py                 # ~10 min on 2 cores
    python benchmarks/rl_overhead.py --json          # also writes benchmarks/results/rl_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = "ea363c3"  # the last commit before the resident gang: a torchrun gang per update, rollouts on one rank
ITERATIONS = 6


def prepare(workdir: Path) -> dict:
    """Demo set, tiny model and the frame cache of a workspace template (built once per workdir)."""
    marker = workdir / "ready.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    from care.data.annotations import load_annotations
    from care.data.demo import benchmark_corpus, demo_corpus, make_demo_benchmark
    from care.media.frame_cache import FrameCache
    from care.media.sampling import FrameSampling
    from care.models.tiny import make_tiny_model

    demo = make_demo_benchmark(workdir / "demo", train=48, val=8, seed=0)
    model = make_tiny_model(workdir / "tiny", corpus=benchmark_corpus(demo) + demo_corpus(), seed=0)
    frames = {"nframes": 4, "max_pixels": 3136, "image_max_pixels": 3136}
    cache = FrameCache(workdir / "home" / "cache" / "frames", FrameSampling(**frames), demo)
    for s in load_annotations(Path(demo) / "annotations" / "training_6k.jsonl", demo, shuffle_options=False).samples:
        if s.video:
            cache.put(Path(demo) / s.video, "video")
        cache.put(Path(demo) / s.image, "image")
    info = {"demo": str(demo), "model": str(model), "frames": frames, "cache": str(workdir / "home" / "cache")}
    marker.write_text(json.dumps(info))
    return info


def rl_config(info: dict, procs: int, iterations: int) -> dict:
    """The demo's RL section (care/configs/demo.yaml), 2 generation chunks so that 2 ranks both sample."""
    return {"run_name": f"overhead-{procs}", "model": info["model"], "data_root": info["demo"],
            "frames": info["frames"], "shuffle_options": False, "iterations": iterations, "seed": 0,
            "checkpoint_every": 10,
            "rollout": {"group_size": 8, "prompts_per_iteration": 4, "generation_batch_prompts": 2,
                        "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 48}},
            "optim": {"learning_rate": 1e-4, "micro_batch_size": 32, "lr_scheduler": "constant", "ema_every": 10,
                      "num_processes": procs}}


# -- the worker: one flow run in the tree under test ----------------------------------------------------------
def worker(a: argparse.Namespace) -> None:
    import shutil

    home = Path(a.home)
    shutil.copytree(Path(a.template) / "home", home)  # the frame cache, as care preprocess leaves it
    os.environ["CARE_HOME"] = str(home)
    timers: dict[str, list[tuple[float, float]]] = {"generation": [], "reference": []}
    launches: list[float] = []
    ends: list[float] = []
    walls: list[float] = []

    import care.train.rollout as rollout_mod
    import care.train.scoring as scoring_mod

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[name].append((t0, time.perf_counter()))
        return wrapper

    rollout_mod.sample_completions = timed("generation", rollout_mod.sample_completions)
    rollout_mod.behaviour_logprobs = timed("generation", rollout_mod.behaviour_logprobs)
    scoring_mod.reference_likelihoods = timed("reference", scoring_mod.reference_likelihoods)
    popen_init = subprocess.Popen.__init__

    def counting_init(self, *args, **kwargs):
        launches.append(time.perf_counter())
        popen_init(self, *args, **kwargs)

    from care.cli.runtime import prefect_env
    from care.train.config import RLConfig
    from care.workspace import Workspace

    prefect_env(Workspace.at(home))  # the private server starts before any iteration is timed
    import flows.rl as rl_flow

    summary = rl_flow._summary_line

    def recording_summary(it, total, scored, opt, seconds, hits):
        walls.append(seconds)
        ends.append(time.perf_counter())
        return summary(it, total, scored, opt, seconds, hits)

    rl_flow._summary_line = recording_summary
    config = RLConfig.model_validate(rl_config(json.loads(Path(a.info).read_text()), a.procs, a.iterations))
    subprocess.Popen.__init__ = counting_init
    started = time.perf_counter()
    rl_flow.rl(config, home=str(home))
    subprocess.Popen.__init__ = popen_init
    out = _breakdown(home, config.run_id(), started, ends, walls, timers, launches)
    out["floor"] = _floor(home)
    Path(a.out).write_text(json.dumps(out))


def _floor(home: Path, iterations: int = 6) -> dict:
    """What one iteration of three stages costs with no work in them: three Prefect task runs with the stage
    tasks' options (content cache key, JSON result persisted, retries) and their three ``stages`` rows, written
    as the design's rl flow writes them (one catalog connection per iteration here, one per row before). The overhead no design of the stage bodies can remove while Prefect tasks stay the unit
    of caching and retries and the catalog stays a file other processes may open between writes."""
    import uuid

    from prefect import flow, task

    from care.store import runs

    def key(context, p):
        return f"floor-{p['salt']}-{p['n']}"

    @task(name="floor-stage", cache_key_fn=key, retries=2, retry_delay_seconds=2, persist_result=True,
          result_serializer="json")
    def stage(salt: str, n: int) -> dict:
        return {"path": f"/nowhere/{n}", "n": n}

    catalog_file = str(home / "care.duckdb")
    prefect_s: list[float] = []
    catalog_s: list[float] = []

    @flow(name="floor")
    def loop(salt: str) -> None:
        for it in range(iterations):
            t0 = time.perf_counter()
            for k in range(3):
                stage(salt=salt, n=3 * it + k)
            t1 = time.perf_counter()
            if hasattr(runs, "record_stages"):  # this design: the iteration's rows in one connection
                runs.record_stages([runs.StageOutcome(f"floor-{salt}", it, f"s{k}", "completed", seconds=0.0)
                                    for k in range(3)], path=catalog_file)
            else:  # the baseline: a connection per stage row
                for k in range(3):
                    runs.record_stage(f"floor-{salt}", it, f"s{k}", status="completed", seconds=0.0,
                                      path=catalog_file)
            prefect_s.append(t1 - t0)
            catalog_s.append(time.perf_counter() - t1)

    loop(uuid.uuid4().hex)
    steady = slice(1, None)  # the first iteration pays Prefect's first task-run setup
    return {"prefect_tasks": statistics.median(prefect_s[steady]), "catalog_rows": statistics.median(catalog_s[steady])}


def _breakdown(home: Path, run_id: str, started: float, ends: list[float], walls: list[float],
               timers: dict, launches: list[float]) -> dict:
    import duckdb

    con = duckdb.connect(str(home / "care.duckdb"), read_only=True)
    metrics = {(step, name): value for step, name, value in con.execute(
        "select step, name, value from metrics where run_id = ?", [run_id]).fetchall()}
    stages = {}
    for it, seconds in con.execute("select iteration, sum(seconds) from stages where run_id = ? group by 1",
                                   [run_id]).fetchall():
        stages[it] = seconds
    con.close()
    bounds = [started, *ends]
    rows = []
    for it, wall in enumerate(walls):
        lo, hi = bounds[it], bounds[it + 1]

        def inside(name, lo=lo, hi=hi):
            return sum(t1 - t0 for t0, t1 in timers[name] if lo <= t0 < hi)

        step = it + 1
        generation = inside("generation") or metrics.get((step, "generation_seconds"), 0.0)
        reference = inside("reference") or metrics.get((step, "reference_forward_seconds"), 0.0)
        update = metrics.get((step, "update_seconds"), 0.0)
        compute = generation + reference + update
        rows.append({"iteration": it, "wall": wall, "generation": generation, "reference_forward": reference,
                     "update": update, "compute": compute, "overhead": wall - compute,
                     "overhead_inside_stages": stages.get(it, 0.0) - compute,
                     "overhead_between_stages": wall - stages.get(it, 0.0),
                     "launches": sum(1 for t in launches if lo <= t < hi)})
    return {"iterations": rows}


# -- the driver -----------------------------------------------------------------------------------------------
def baseline_tree(revision: str, into: Path) -> Path:
    """The files of ``revision`` (``git archive``), to import its ``care`` from."""
    folder = into / f"tree-{revision}"
    if not (folder / "care").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", revision], check=True,
                                 capture_output=True).stdout
        tar = folder / "tree.tar"
        tar.write_bytes(archive)
        with tarfile.open(tar) as t:
            t.extractall(folder, filter="data")
        tar.unlink()
    return folder


def spawn(tree: Path, procs: int, a: argparse.Namespace, workdir: Path, tag: str) -> dict:
    out = workdir / f"result-{tag}.json"
    home = workdir / f"home-{tag}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PYTHONPATH": str(tree), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1",
                "PREFECT_HOME": str(workdir / f"prefect-{tag}")})
    # this script (the baseline tree has none) with the tree under test first on the path
    cmd = [sys.executable, __file__, "--worker",
           "--tree", str(tree), "--procs", str(procs), "--iterations", str(a.iterations), "--home", str(home),
           "--template", str(workdir), "--info", str(workdir / "ready.json"), "--out", str(out)]
    for attempt in (1, 2):  # a crashed worker is reported and run once more (the JSON counts the crashes)
        if home.exists():
            import shutil

            shutil.rmtree(home)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout, cwd=tree)
        if proc.returncode == 0:
            return {**json.loads(out.read_text()), "crashed_attempts": attempt - 1}
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        print(f"  worker {tag} failed (exit {proc.returncode}), attempt {attempt}:\n{tail}", flush=True)
    raise SystemExit(f"worker {tag} failed twice")


def summarise(runs: list[dict]) -> dict:
    """Medians over the steady-state iterations (all but the first) of every repetition; the first apart."""
    keys = ("wall", "generation", "reference_forward", "update", "compute", "overhead", "overhead_inside_stages",
            "overhead_between_stages", "launches")
    steady = [row for run in runs for row in run["iterations"][1:]]
    first = [run["iterations"][0] for run in runs]
    out = {"steady": {k: statistics.median(r[k] for r in steady) for k in keys},
           "first_iteration": {k: statistics.median(r[k] for r in first) for k in keys}}
    floors = [run["floor"] for run in runs if "floor" in run]
    if floors:
        out["floor"] = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
        out["steady"]["overhead_above_floor"] = out["steady"]["overhead"] - sum(out["floor"].values())
    walls = [r["wall"] for r in steady]
    out["steady"]["wall_min_max"] = (min(walls), max(walls))
    out["steady"]["overhead_share"] = out["steady"]["overhead"] / out["steady"]["wall"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    ap.add_argument("--template", help=argparse.SUPPRESS)
    ap.add_argument("--info", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--procs", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--iterations", type=int, default=ITERATIONS, help="RL iterations per run (the first is apart)")
    ap.add_argument("--num-processes", type=int, nargs="+", default=[1, 2], help="optim.num_processes to measure")
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the old design")
    ap.add_argument("--reps", type=int, default=1, help="A/B repetitions (order swapped each time)")
    ap.add_argument("--workdir", default=None, help="where data, trees and homes go (default: a temp folder)")
    ap.add_argument("--timeout", type=int, default=1200)
    ap.add_argument("--json", action="store_true", help="write benchmarks/results/rl_overhead.json")
    a = ap.parse_args()
    if a.worker:
        sys.path.insert(0, a.tree)
        worker(a)
        return
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="care-overhead-"))
    workdir.mkdir(parents=True, exist_ok=True)
    prepare(workdir)
    trees = {"old": baseline_tree(a.baseline, workdir), "new": REPO}
    results: dict[str, dict[int, list]] = {"old": {}, "new": {}}
    for rep in range(a.reps):
        for procs in a.num_processes:
            order = ("old", "new") if rep % 2 == 0 else ("new", "old")
            for design in order:
                tag = f"{design}-{procs}-{rep}"
                print(f"[{time.strftime('%H:%M:%S')}] {design} design, num_processes {procs}, repetition {rep + 1}",
                      flush=True)
                results[design].setdefault(procs, []).append(spawn(trees[design], procs, a, workdir, tag))
    table = {design: {procs: summarise(runs) for procs, runs in by_procs.items()}
             for design, by_procs in results.items()}
    print(f"\nsteady-state seconds per iteration (median of iterations 2..{a.iterations}), demo shape, "
          f"{os.cpu_count()} CPUs")
    print(f"{'design':<6} {'procs':>5} {'wall':>7} {'gen':>7} {'ref fwd':>7} {'update':>7} {'overhead':>8} "
          f"{'share':>6} {'in stg':>7} {'between':>7} {'launch':>6} {'1st it':>7}")
    for procs in a.num_processes:
        for design in ("old", "new"):
            s, f = table[design][procs]["steady"], table[design][procs]["first_iteration"]
            print(f"{design:<6} {procs:>5} {s['wall']:>7.2f} {s['generation']:>7.2f} {s['reference_forward']:>7.2f} "
                  f"{s['update']:>7.2f} {s['overhead']:>8.2f} {s['overhead_share']:>6.0%} "
                  f"{s['overhead_inside_stages']:>7.2f} {s['overhead_between_stages']:>7.2f} {s['launches']:>6.1f} "
                  f"{f['wall']:>7.2f}")
        old, new = table["old"][procs]["steady"], table["new"][procs]["steady"]
        print(f"       num_processes {procs}: iteration {old['wall'] / new['wall']:.2f}x faster, overhead "
              f"{old['overhead'] / max(new['overhead'], 1e-9):.1f}x less")
        if floor := table["new"][procs].get("floor"):
            print(f"       floor of 3 empty stages: Prefect task runs {floor['prefect_tasks']:.2f} s + catalog rows "
                  f"{floor['catalog_rows']:.2f} s = {sum(floor.values()) / new['wall']:.0%} of the new iteration; "
                  f"the new design's overhead above it: {new['overhead_above_floor']:.2f} s")
    if a.json:
        import platform

        import torch

        out = REPO / "benchmarks" / "results" / "rl_overhead.json"
        out.write_text(json.dumps({"baseline": a.baseline, "iterations": a.iterations, "reps": a.reps,
                                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                               "torch": torch.__version__},
                                   "summary": table, "runs": results}, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
