"""How our RL step time and peak memory grow with G, prompts per step, video frames and completion length.

One factor at a time around a base point (G=4, P=2 prompts, 4 frames, 32 new tokens; video + image prompts from
the frame cache), each point in its own subprocess (``rl_step_vs_trl.py``'s worker: rollout -> scoring ->
optimisation in-process, 1 warm-up + ``--steps`` timed steps, medians). Completions are forced to exactly the
completion length (``min_new_tokens``), so token counts are fixed by the grid. Plots step time per phase and
peak RSS against each factor to ``benchmarks/results/scale_curve.png``.

    python benchmarks/scale_curve.py            # ~2 min on 2 cores
    python benchmarks/scale_curve.py --json     # also benchmarks/results/scale_curve.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rl_step_vs_trl import RESULTS, machine, prepare, spawn

BASE = {"G": 4, "prompts": 2, "nframes": 4, "max_new": 32}
GRID = {"G": [2, 4, 8], "prompts": [1, 2, 4], "nframes": [2, 4, 8], "max_new": [16, 32, 64]}


def points() -> list[dict]:
    seen, out = set(), []
    for factor, values in GRID.items():
        for v in values:
            p = {**BASE, factor: v}
            key = tuple(sorted(p.items()))
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def measure(point: dict, workdir: Path, a: argparse.Namespace) -> dict:
    info = prepare(workdir, max_new=point["max_new"], nframes=point["nframes"])
    info_path = workdir / f"info-{point['max_new']}-{point['nframes']}.json"
    info_path.write_text(json.dumps(info))
    args = argparse.Namespace(G=point["G"], prompts=point["prompts"], max_new=point["max_new"], steps=a.steps,
                              warmup=1, lr=1e-4, threads=a.threads, timeout=600)
    return spawn("video-cache", info_path, args)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(GRID), figsize=(4 * len(GRID), 6.5), sharey="row")
    labels = {"G": "G (completions per prompt)", "prompts": "prompts per step", "nframes": "video frames",
              "max_new": "completion tokens"}
    for col, (factor, values) in enumerate(GRID.items()):
        sel = [next(r for r in rows if all(r["point"][k] == (v if k == factor else BASE[k]) for k in BASE))
               for v in values]
        ax = axes[0, col]
        for phase, style in (("generation", "o-"), ("scoring", "s-"), ("update", "^-"), ("step", "k*-")):
            ax.plot(values, [r["result"][phase]["seconds"] for r in sel], style, label=phase)
        ax.set_xscale("log", base=2)
        ax.set_xticks(values, [str(v) for v in values])
        ax.set_title(labels[factor])
        ax.grid(alpha=0.3)
        axes[1, col].plot(values, [r["result"]["process_peak_rss_mib"] for r in sel], "o-", color="tab:red")
        axes[1, col].set_xscale("log", base=2)
        axes[1, col].set_xticks(values, [str(v) for v in values])
        axes[1, col].set_xlabel(labels[factor])
        axes[1, col].grid(alpha=0.3)
    axes[0, 0].set_ylabel("seconds per RL step (median)")
    axes[1, 0].set_ylabel("peak RSS of the process (MiB)")
    axes[0, 0].legend(fontsize=8)
    base = ", ".join(f"{k}={v}" for k, v in BASE.items())
    fig.suptitle(f"care RL step scaling, tiny Qwen2.5-VL on CPU (one factor varied; base {base})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per point")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--workdir", default=None, help="reuse a prepared folder (default: a temp folder)")
    ap.add_argument("--json", action="store_true", help="write benchmarks/results/scale_curve.json")
    a = ap.parse_args()
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="care-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'G':>3} {'P':>3} {'frames':>6} {'tokens':>6} {'gen s':>7} {'score s':>7} {'update s':>8} {'step s':>7} "
          f"{'peak MiB':>8}")
    for point in points():
        r = measure(point, workdir, a)
        rows.append({"point": point, "result": r})
        print(f"{point['G']:>3} {point['prompts']:>3} {point['nframes']:>6} {point['max_new']:>6} "
              f"{r['generation']['seconds']:>7.3f} {r['scoring']['seconds']:>7.3f} {r['update']['seconds']:>8.3f} "
              f"{r['step']['seconds']:>7.3f} {r['process_peak_rss_mib']:>8.0f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    png = RESULTS / "scale_curve.png"
    plot(rows, png)
    print(f"wrote {png}")
    if a.json:
        path = RESULTS / "scale_curve.json"
        path.write_text(json.dumps({"base": BASE, "grid": GRID, "steps": a.steps, "machine": machine(),
                                    "points": rows}, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
