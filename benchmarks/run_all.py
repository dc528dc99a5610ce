"""Run every benchmark in benchmarks/ and write its figures to benchmarks/results/<name>.json (``make bench``).

Benchmarks that print one JSON object with ``--json`` have it captured here; the RL ones write their own JSON
(and PNG) under benchmarks/results/. Sizes are the defaults of each script, chosen so the whole run stays under
about 10 minutes on 2 cores. A failing benchmark is reported and the others still run; the exit status is 1 if
any failed.

    python benchmarks/run_all.py
    python benchmarks/run_all.py --only rl_step_vs_trl scale_curve
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


LONG_PROMPT_PIXELS = 448 * 448  # 256 visual tokens per prompt image


def benchmarks(workdir: Path) -> dict[str, tuple[str, list[str], bool]]:
    """name -> (script, arguments, whether the script writes its own JSON) for every benchmark."""
    shared = ["--workdir", str(workdir)]
    return {
        "frame_cache": ("frame_cache", ["--json"], False),
        "reference_scoring": ("reference_scoring", ["--json"], False),
        "rl_step_vs_trl": ("rl_step_vs_trl", ["--json", *shared], True),
        # the shape of the target workload: prompts much longer than completions, G = 8
        "rl_step_vs_trl_long_prompts": ("rl_step_vs_trl", [
            "--json", "--name", "rl_step_vs_trl_long_prompts", "--image-pixels", str(LONG_PROMPT_PIXELS),
            "--G", "8", "--prompts", "2", "--skip-video", *shared], True),
        "scale_curve": ("scale_curve", ["--json", *shared], True),
        "checkpoint_io": ("checkpoint_io", ["--json"], False),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="names of benchmarks to run (default: all)")
    a = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="care-bench-all-"))  # demo set and tiny model, shared by the RL ones
    failed, started = [], time.perf_counter()
    for name, (script, args, writes_own) in benchmarks(workdir).items():
        if a.only and name not in a.only:
            continue
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        proc = subprocess.run([sys.executable, str(HERE / f"{script}.py"), *args], capture_output=True, text=True)
        if proc.returncode != 0:
            failed.append(name)
            print(f"{name} FAILED (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
            continue
        if writes_own:
            print(proc.stdout.strip())
        else:
            result = json.loads(proc.stdout)
            (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
            print(f"wrote {RESULTS / f'{name}.json'}")
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"all benchmarks: {time.perf_counter() - started:.0f} s; failed: {', '.join(failed) or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
