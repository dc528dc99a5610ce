"""Checkpoints: atomic, pickle-free, checksummed.

Layout of one checkpoint folder (``<run>/checkpoints/<name>/``)::

    policy/              save_pretrained (safetensors) + the processor, so the folder is a loadable model path
    reference/           save_pretrained of the EMA / frozen reference (absent when there is none)

Unchanged parts (the processor during RL, the reference between EMA updates) are hard links to the files of the
checkpoint they come from (``processor_from`` / ``reference_from``), checked against its manifest.
    optimizer.safetensors + optimizer.json     AdamW moments (tensors) and param groups (JSON)
    scheduler.json       learning-rate scheduler state
    rng.safetensors + rng.json                 torch CPU/CUDA RNG states, Python and NumPy RNG states
    state.json           trainer state: step, iteration, data cursor, EMA counters, anything JSON
    MANIFEST.json        sha256 and size of every file above, written last

The folder is written under a temporary name and renamed into place, so a reader sees a whole checkpoint or
none. Nothing here uses pickle: tensors go to safetensors, everything else to JSON, so loading a checkpoint
never executes code from the workspace. ``load_checkpoint`` verifies the manifest first and refuses a
checkpoint whose files are missing, truncated or altered.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from care.errors import CareError
from care.failpoints import failpoint
from care.models.loading import hf_progress_bars

MANIFEST = "MANIFEST.json"
FORMAT_VERSION = 1
STALE_TEMP_S = 3600.0  # a .tmp-* checkpoint folder untouched this long was left by a killed write


class CheckpointError(CareError):
    """A checkpoint folder is incomplete or corrupted."""


@dataclass
class TrainingState:
    """What a trainer needs besides weights to continue exactly where it stopped."""

    step: int = 0
    iteration: int = 0
    data_cursor: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- optimizer / scheduler / RNG state


def capture_optimizer(optimizer: torch.optim.Optimizer, *, copy: bool = False
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON metadata) of an optimizer's state; ``copy`` = tensors that later steps cannot change."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().to("cpu", copy=copy).contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": json.loads(json.dumps(sd["param_groups"])), "scalars": scalars}


def capture_scheduler(scheduler: Any) -> dict[str, Any]:
    return _jsonable(scheduler.state_dict())


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any) -> Any:
    """Scheduler state dicts hold plain numbers, lists and (empty) dicts of lambda attributes."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    raise TypeError(f"scheduler state value of type {type(value).__name__} cannot be stored as JSON")


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = st
    py_state = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --------------------------------------------------------------------------- manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_entries(folder: Path, *, skip: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """{relative path: {"sha256", "size"}} of every file under ``folder`` but the manifest (and ``skip``)."""
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.name != MANIFEST and str(p.relative_to(folder)) not in skip)
    return {str(p.relative_to(folder)): {"sha256": sha256_file(p), "size": p.stat().st_size} for p in files}


def write_manifest(folder: Path, entries: dict[str, dict[str, Any]] | None = None) -> None:
    entries = manifest_entries(folder) if entries is None else entries
    _write_json(folder / MANIFEST, {"format_version": FORMAT_VERSION, "files": entries})


MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".index.json")
MODEL_FILE_NAMES = ("config.json", "generation_config.json", "dcp.json")  # dcp.json: a sharded checkpoint's pointer


def _is_model_file(name: str) -> bool:
    """A file ``save_pretrained`` of a model writes (weights, shard index, configs), not one of the processor."""
    base = name.rsplit("/", 1)[-1]
    return base in MODEL_FILE_NAMES or base.endswith(MODEL_FILE_SUFFIXES)


def _unchanged_part(source: Path, part: str) -> dict[str, dict[str, Any]]:
    """The source manifest's entries of one part: ``reference`` (all of reference/) or ``processor`` (the files
    of policy/ that the model's own save does not write)."""
    listed = json.loads((source / MANIFEST).read_text())["files"]
    if part == "reference":
        return {k: v for k, v in listed.items() if k.startswith("reference/")}
    return {k: v for k, v in listed.items() if k.startswith("policy/") and not _is_model_file(k)}


def _link_files(source: Path, names: dict[str, dict[str, Any]], dest: Path) -> set[str]:
    """Hard-link ``source/name`` to ``dest/name`` for each name (copy where the filesystem cannot link);
    returns the names that were hard-linked (already durable: they need no fsync)."""
    linked = set()
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / name, target)
            linked.add(name)
        except OSError:
            shutil.copy2(source / name, target)
    return linked


def verify_manifest(folder: Path, *, full: bool = True) -> None:
    """Raise CheckpointError naming the first missing, truncated or (``full``: sha256 of every byte) altered file.

    ``full=False`` checks presence and sizes only: what the per-iteration bookkeeping (is a checkpoint there,
    which is the newest) needs, at a cost that does not grow with the model. Loading a checkpoint (a resume, an
    evaluation, an export) always verifies in full.
    """
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST}; the checkpoint is incomplete (its write never finished)")
    entries = json.loads(manifest.read_text())["files"]
    for rel, info in entries.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {MANIFEST} but missing; delete the checkpoint and re-run")
        if path.stat().st_size != info["size"]:
            raise CheckpointError(f"{path}: truncated ({path.stat().st_size} of {info['size']} bytes)")
        if full and sha256_file(path) != info["sha256"]:
            raise CheckpointError(f"{path}: checksum mismatch; the file was altered or corrupted")


# --------------------------------------------------------------------------- save / load


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))


def _fsync_tree(folder: Path, skip: set[str] = frozenset()) -> None:
    for p in folder.rglob("*"):
        if p.is_file() and str(p.relative_to(folder)) not in skip:
            with p.open("rb") as fh:
                os.fsync(fh.fileno())


def save_checkpoint(
    folder: str | Path,
    *,
    policy: torch.nn.Module,
    reference: torch.nn.Module | None = None,
    processor: Any | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    state: TrainingState | None = None,
    reference_from: str | Path | None = None,
    processor_from: str | Path | None = None,
    policy_state: dict[str, torch.Tensor] | None = None,
    reference_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
    scheduler_state: dict[str, Any] | None = None,
    rng_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:
    """Write a complete checkpoint to ``folder`` atomically and return its path.

    An existing complete checkpoint at ``folder`` is replaced only after the new one is fully written.

    Parts that did not change since an earlier complete checkpoint are hard-linked from it instead of being
    serialised again (an RL iteration without an EMA update then writes one model, not two, and no tokenizer):
    ``reference_from`` holds exactly ``reference`` in its ``reference/`` (the EMA did not move since);
    ``processor_from`` holds exactly ``processor`` beside its policy. Each linked file must match that
    checkpoint's manifest, else the part is written from the object as usual.

    ``policy_state`` / ``reference_state`` / ``optimizer_state`` / ``scheduler_state`` / ``rng_state``: a
    snapshot taken earlier (``care.train.trainer.save_trainer`` in the background), written instead of the live
    objects' current values; the modules then only provide their configs.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder.parent)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        reused: dict[str, tuple[Path, dict[str, dict[str, Any]]]] = {}  # part -> (source, its manifest entries)
        for part, obj, source in (("reference", reference, reference_from), ("processor", processor, processor_from)):
            if obj is not None and source is not None and (entries := _unchanged_part(Path(source), part)):
                reused[part] = (Path(source), entries)
        with hf_progress_bars(False):  # one bar per checkpoint is log noise; the stages report progress
            policy.save_pretrained(tmp / "policy", safe_serialization=True, state_dict=policy_state)
            if processor is not None and "processor" not in reused:
                processor.save_pretrained(tmp / "policy")
            if reference is not None and "reference" not in reused:
                reference.save_pretrained(tmp / "reference", safe_serialization=True, state_dict=reference_state)
        hard_linked: set[str] = set()
        for part, (source, entries) in list(reused.items()):
            if any((tmp / name).exists() for name in entries):  # the model's save wrote it: not a processor file
                del reused[part]
                with hf_progress_bars(False):
                    processor.save_pretrained(tmp / "policy")
                continue
            hard_linked |= _link_files(source, entries, tmp)
        if optimizer is not None or optimizer_state is not None:
            tensors, meta = optimizer_state or capture_optimizer(optimizer)
            save_file(tensors, tmp / "optimizer.safetensors")
            _write_json(tmp / "optimizer.json", meta)
        if scheduler is not None or scheduler_state is not None:
            _write_json(tmp / "scheduler.json", scheduler_state or capture_scheduler(scheduler))
        st = state or TrainingState()
        write_rng_and_state(tmp, st, rng_state)
        entries = manifest_entries(tmp)
        for part, (_, expected) in reused.items():
            if any(entries.get(name) != info for name, info in expected.items()):  # source altered since written
                for name in expected:
                    (tmp / name).unlink()
                    hard_linked.discard(name)
                with hf_progress_bars(False):
                    if part == "reference":
                        reference.save_pretrained(tmp / "reference", safe_serialization=True,
                                                  state_dict=reference_state)
                    else:
                        processor.save_pretrained(tmp / "policy")
                entries = manifest_entries(tmp)
        write_manifest(tmp, entries)
        publish(tmp, folder, iteration=st.iteration, already_durable=hard_linked)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_rng_and_state(tmp: Path, state: TrainingState,
                        rng_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> None:
    """The RNG states (now, or the given snapshot) and ``state.json`` of a checkpoint being written."""
    rng_tensors, rng_meta = rng_state or capture_rng()
    save_file(rng_tensors, tmp / "rng.safetensors")
    _write_json(tmp / "rng.json", rng_meta)
    _write_json(tmp / "state.json", {"format_version": FORMAT_VERSION, **state.__dict__})


def publish(tmp: Path, folder: Path, *, iteration: int, already_durable: set[str] = frozenset()) -> None:
    """fsync a fully written (manifested) temp folder and rename it to ``folder``, replacing a complete one
    only once the new one is whole."""
    _fsync_tree(tmp, skip=already_durable)
    failpoint("checkpoint-write", iteration)
    if folder.exists():
        trash = folder.parent / f".trash-{folder.name}-{uuid.uuid4().hex[:8]}"
        folder.rename(trash)
        tmp.rename(folder)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(folder)


def read_training_state(folder: str | Path) -> TrainingState:
    data = json.loads((Path(folder) / "state.json").read_text())
    data.pop("format_version", None)
    return TrainingState(**data)


def load_checkpoint_state(
    folder: str | Path,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng_state: bool = True,
) -> TrainingState:
    """Verify the manifest, then restore optimizer, scheduler and RNG in place; return the trainer state.

    Model weights are loaded separately with ``from_pretrained(folder / "policy")`` (and ``/ "reference"``), the
    same path any model takes.
    """
    folder = Path(folder)
    verify_manifest(folder)
    if optimizer is not None:
        meta = json.loads((folder / "optimizer.json").read_text())
        optimizer.load_state_dict(_optimizer_from_files(load_file(folder / "optimizer.safetensors"), meta))
    if scheduler is not None:
        scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    if restore_rng_state:
        restore_rng(load_file(folder / "rng.safetensors"), json.loads((folder / "rng.json").read_text()))
    return read_training_state(folder)


def is_complete(folder: str | Path, *, full: bool = True) -> bool:
    """True when the folder holds a manifest-verified checkpoint (``full=False``: files present, sizes right)."""
    try:
        verify_manifest(Path(folder), full=full)
    except (CheckpointError, OSError, ValueError, KeyError):
        return False
    return True


def make_initial_checkpoint(model_path: str | Path, folder: str | Path) -> Path:
    """Checkpoint 0 of a run: the starting model as policy and as reference (EMA starts from the policy).

    Written once per run so every stage reads the same checkpoint layout, whatever the starting model was
    (a tiny local model, an SFT checkpoint's policy, or a hub id on a GPU machine).
    """
    from care.models.loading import load_model, load_processor

    folder = Path(folder)
    if is_complete(folder):
        return folder
    policy = load_model(model_path)  # the checkpoint's own dtype: a bf16 model is stored as is (exact)
    return save_checkpoint(folder, policy=policy, reference=policy, processor=load_processor(model_path),
                           state=TrainingState(step=0, iteration=0))


def iteration_checkpoint_name(iteration: int) -> str:
    """Name of the checkpoint after ``iteration`` completed iterations (``iter-00000`` is the starting model)."""
    return f"iter-{iteration:05d}"


def remove_stale_temps(folder: str | Path, older_than_s: float = STALE_TEMP_S) -> list[Path]:
    """Delete ``.tmp-*`` folders left in ``folder`` by checkpoint writes that were killed.

    Only ones untouched for ``older_than_s``: a write in progress (seconds to minutes, even for a 7B model) in
    another process is never taken for a dead one.
    """
    cutoff = time.time() - older_than_s
    removed = []
    for p in Path(folder).glob(".tmp-*"):
        try:
            stale = p.is_dir() and p.stat().st_mtime < cutoff
        except FileNotFoundError:  # finished (renamed) meanwhile
            continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def latest_complete(folder: str | Path, prefix: str = "iter-") -> tuple[int, Path] | None:
    """(number, path) of the newest complete ``<prefix>NNNNN`` checkpoint in ``folder``, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for p in folder.iterdir():
        if p.name.startswith(prefix) and p.name[len(prefix):].isdigit() and is_complete(p):
            found.append((int(p.name[len(prefix):]), p))
    return max(found) if found else None


def prune_checkpoints(folder: str | Path, keep: int, prefix: str = "iter-", *, keep_every: int = 0) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep`` (0 keeps all), except every ``keep_every``-th
    (numbers divisible by it, but not the starting checkpoint 0, for later evaluation; 0 = none). Returns
    what was removed.

    Only complete checkpoints are candidates and the newest complete one is always kept (a resume starts
    there); folders being written (``.tmp-*``) are never looked at. Called by the writer after its write,
    so pruning never races it.
    """
    if keep <= 0:
        return []
    folder = Path(folder)
    numbered = sorted((int(p.name[len(prefix):]), p) for p in folder.iterdir()
                      if p.name.startswith(prefix) and p.name[len(prefix):].isdigit() and is_complete(p, full=False))
    removed = [p for n, p in numbered[:-keep] if not (keep_every and n > 0 and n % keep_every == 0)]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed
