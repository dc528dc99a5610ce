"""benchmarks/gpu_check.py and `make gpu-check` / `make gpu-wheels`, on the CPU.

The GPU machine's Python has torch, transformers and accelerate but no pydantic, cachetools, prefect, duckdb,
decord or PyAV (docs/gpu_check.md). The end-to-end test runs the tiny check with prefect, duckdb, decord and av
blocked from import, and records every third-party package that the check or care's modules import: each must
be on that machine or among the carried wheels.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"

# import names of the GPU machine's own packages that care may import (.library KINDS.md, "Python packages
# already there"); anything else care needs must travel as a wheel (gpu_check.CARRIED_WHEELS)
ON_THE_GPU_MACHINE = frozenset({
    "torch", "torchvision", "transformers", "accelerate", "tokenizers", "safetensors", "huggingface_hub", "numpy",
    "pyarrow", "PIL", "yaml", "jinja2", "psutil", "tqdm", "rich", "typer", "packaging", "filelock", "fsspec",
    "regex", "requests",
})
ABSENT_THERE = ("prefect", "duckdb", "decord", "av")

RUNNER = r"""
import importlib.abc, json, runpy, sys

script, out, record = sys.argv[1:4]
blocked = set(sys.argv[4].split(","))
machinery = ("importlib", "_frozen_importlib")
direct = set()


class LikeTheGpuMachine(importlib.abc.MetaPathFinder):
    # refuses the blocked packages; records the third-party packages the check or a care module imports
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        if top in blocked:
            raise ImportError("blocked: " + name)
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(machinery):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__", "") if frame is not None else ""
        if (importer == "__main__" or importer.split(".")[0] == "care") and top != "care" \
                and top not in sys.stdlib_module_names:
            direct.add(top)
        return None


sys.meta_path.insert(0, LikeTheGpuMachine())
sys.argv = [script, "--shape", "tiny", "--device", "cpu", "--out", out]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open(record, "w") as fh:
        json.dump(sorted(direct), fh)
"""


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_dry_run_prints_the_plan_and_builds_no_model(tmp_path):
    out = tmp_path / "gpu_check.json"
    code = ("import resource, runpy, sys\n"
            f"sys.argv = [{str(SCRIPT)!r}, '--dry-run', '--device', 'cpu', '--out', {str(out)!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
            "finally:\n"
            "    print('max_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    # the published Qwen2.5-VL-3B-Instruct shape, counted on the meta device
    assert "shape 3b" in text
    assert "hidden 2048, 36 layers, 16 heads / 2 KV heads (head_dim 128), intermediate 11008, vocab 151936" in text
    assert "mrope [16, 24, 24]" in text
    assert "depth 32, hidden 1280, 16 heads, intermediate 3420, out_hidden 2048" in text
    assert "parameters: 3,754,622,976" in text
    assert "weights_fp32 14.0 GiB, gradients_fp32 14.0 GiB, adamw_moments_fp32 28.0 GiB, ema_reference_fp32 14.0 GiB" \
        in text
    assert "fits one H200" in text and ": yes" in text
    assert "2 video prompts x G=8 = 16 rollouts; 8 frames of 252x252" in text
    for step in ("generate:", "update x2:", "FSDP2 update:", "gloo", "peak GPU memory"):
        assert step in text
    assert "[1/5]" not in text and not out.exists()  # nothing ran, nothing written
    max_rss_gib = int(text.rsplit("max_rss_kib", 1)[1].split()[0]) / 2**20
    assert max_rss_gib < 4, f"{max_rss_gib:.1f} GiB: a dry run must not build the 3B model (14 GiB in fp32)"


def test_seven_b_plan_names_the_layers_that_fit(gpu_check, capsys):
    assert gpu_check.main(["--dry-run", "--shape", "7b", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "hidden 3584, 28 layers, 28 heads / 4 KV heads (head_dim 128), intermediate 18944, vocab 152064" in text
    assert "tied embeddings False" in text and "out_hidden 3584" in text
    assert "parameters: 8,292,166,656" in text
    assert "fits one H200" in text and "NO -- pass --layers 12 or fewer" in text


def test_tiny_check_runs_end_to_end_with_only_what_the_gpu_machine_has(tmp_path, gpu_check):
    out, record = tmp_path / "gpu_check.json", tmp_path / "imports.json"
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(SCRIPT), str(out), str(record), ",".join(ABSENT_THERE)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "GPU check passed" in proc.stdout
    carried = {name.replace("-", "_") for name in gpu_check.CARRIED_WHEELS}
    imported = set(json.loads(record.read_text()))
    assert {"torch", "transformers", "pydantic", "cachetools"} <= imported  # the record works (numpy and the
    # like are imported by torch first, which is torch's business)
    missing = imported - ON_THE_GPU_MACHINE - carried
    assert not missing, f"the check imports {sorted(missing)}, which the GPU machine has not and no wheel carries"

    result = json.loads(out.read_text())
    assert result["ok"] is True and result["shape"] == "tiny" and result["device"] == "cpu"
    assert result["placeholders"] == ["av", "duckdb"]  # blocked above, never used
    for key in ("versions", "parameters", "memory_estimate_bytes", "batch", "build", "generation",
                "shared_prompt_pass", "updates", "update", "fsdp2_update", "peak_gpu_memory_bytes", "seconds_total"):
        assert key in result, key
    g = result["generation"]
    assert g["sequences"] == 8 and g["new_tokens"] > 0 and g["tokens_per_second"] > 0
    assert g["video_tokens_per_prompt"] == 16 and g["image_tokens_per_prompt"] == 4
    assert result["shared_prompt_pass"]["max_abs_logprob_difference"] <= 1e-3
    assert len(result["updates"]) == 2
    for name, u in [("update 1", result["updates"][0]), ("update 2", result["updates"][1]),
                    ("fsdp2", result["fsdp2_update"])]:
        dtypes = u["checks"]["dtypes"]
        assert dtypes["policy"] == dtypes["reference"] == dtypes["adamw_moments"] == ["torch.float32"], name
        assert dtypes["adamw_states"] > 0, name
        assert u["tokens_per_second"] > 0 and u["sequence_tokens"] > u["completion_tokens"] > 0, name
        assert not u["checks"]["policy_moved"]["unchanged_tensors"], name
        assert u["checks"]["policy_moved"]["changed_fraction"] > 0.9, name  # fp32 masters keep a 1e-6 step
        assert u["checks"]["ema_max_deviation"] <= 1e-6, name
    assert result["fsdp2_update"]["backend"] == "gloo"
    assert result["fsdp2_update"]["fsdp_units"]["decoder_layers"] == 2
    assert result["peak_gpu_memory_bytes"] is None  # CPU


def _tiny_trainer(gpu_check, dtype):
    import torch

    from care.models.tiny import build_processor
    from care.train.trainer import Trainer

    args = gpu_check.parse_args(["--shape", "tiny", "--device", "cpu", "--updates", "1"])
    shape = gpu_check.shape_for(args)
    tokenizer = gpu_check.build_tokenizer()
    processor = build_processor(tokenizer, video_max_pixels=56 * 56, image_max_pixels=56 * 56)
    policy = gpu_check.build_model(gpu_check.build_config(shape, tokenizer), tokenizer, torch.device("cpu"), seed=0)
    policy = policy.to(dtype)
    trainer = Trainer(policy=policy, reference=copy.deepcopy(policy), processor=processor, state_id="t", iteration=0)
    return args, shape, trainer


def test_the_update_check_fails_when_master_weights_are_not_fp32(gpu_check):
    import torch

    args, shape, trainer = _tiny_trainer(gpu_check, torch.bfloat16)
    samples, cache = gpu_check.synthetic_samples(2), gpu_check.SyntheticFrames(frames=8, size=56)
    rows, _ = gpu_check.generate(trainer, samples, cache, args, torch.device("cpu"))
    names = gpu_check.watched_names(trainer.policy, shape.num_layers)
    with pytest.raises(gpu_check.CheckFailed, match="not all fp32"):
        gpu_check.update(trainer, rows, samples, cache, args, torch.device("cpu"), names, iteration=0)


def test_a_failed_check_raises_and_writes_what_it_knew(gpu_check, tmp_path):
    out = tmp_path / "gpu_check.json"
    # the full 3B on the CPU is refused on any machine, after the plan and before the model is built
    with pytest.raises(gpu_check.CheckFailed, match="on the CPU would take hours"):
        gpu_check.main(["--shape", "3b", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["ok"] is False and "CheckFailed" in result["error"] and "versions" in result


def test_wheel_requirements_are_the_carried_packages_at_the_installed_versions(gpu_check, capsys):
    assert gpu_check.main(["--wheel-requirements"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == [f"{n}=={importlib.metadata.version(n)}" for n in gpu_check.CARRIED_WHEELS]
    assert {"pydantic", "pydantic-core", "cachetools"} <= set(gpu_check.CARRIED_WHEELS)


@pytest.fixture
def project(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def _make_n(folder: Path, *args: str) -> str:
    # --no-print-directory: under `make test` this make is a sub-make, which would print "Entering directory"
    return subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=folder, capture_output=True,
                          text=True, check=True).stdout


def test_make_gpu_check_uses_the_venv_here_and_installs_no_wheels(project):
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "python").touch()
    (project / ".whl").mkdir()
    (project / ".whl" / "pydantic-2.0-py3-none-any.whl").touch()
    commands = _make_n(project, "gpu-check")
    assert "pip install" not in commands
    assert f"PYTHONPATH={project} " in commands
    assert ".venv/bin/python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json" in commands
    assert "--dry-run" not in commands
    assert "--dry-run" in _make_n(project, "gpu-check", "DRY_RUN=1")


def test_make_gpu_check_on_the_gpu_machine_installs_the_carried_wheels_first(project):
    (project / ".whl").mkdir()
    (project / ".whl" / "pydantic-2.0-py3-none-any.whl").touch()
    lines = _make_n(project, "gpu-check", "OUT=/results").splitlines()
    assert lines[0].startswith("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
                               "--target /tmp/site .whl/pydantic-2.0-py3-none-any.whl")
    assert lines[1].startswith(f"PYTHONPATH={project}:/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py "
                               "--out /results/gpu_check.json")
    # no wheels: the check runs as it is
    shutil.rmtree(project / ".whl")
    assert "pip install" not in _make_n(project, "gpu-check")


def test_make_gpu_wheels_downloads_cpython_312_manylinux_wheels(project):
    (project / ".venv" / "bin").mkdir(parents=True)
    stamp = project / ".venv" / ".installed"
    stamp.touch()
    later = (project / "pyproject.toml").stat().st_mtime + 2
    os.utime(stamp, (later, later))  # newer than pyproject.toml: no reinstall
    commands = _make_n(project, "gpu-wheels")
    assert "pip install" not in commands
    for part in ("pip download", "--no-deps", "--only-binary=:all:", "--python-version 3.12", "--implementation cp",
                 "--platform manylinux_2_28_x86_64", "-d .whl", "benchmarks/gpu_check.py --wheel-requirements"):
        assert part in commands, part
