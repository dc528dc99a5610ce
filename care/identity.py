"""Identities: of a run or stage input (a digest of its config), and of a checkpoint or model (its content id).

* :func:`digest` / :func:`run_id`: sha256 of canonical JSON (sorted keys; pydantic models dumped as JSON). A run
  whose config is unchanged gets the same id, so a re-run resumes it; stages key their caches the same way.
* :func:`checkpoint_id` / :func:`content_id`: what was evaluated or trained from, by content:

  - a checkpoint folder (``policy/`` inside, ``MANIFEST.json`` beside it): sha256 of its manifest, which lists
    every file's sha256;
  - a model folder: sha256 over each file's relative path and bytes; files above 64 MiB enter by size and
    modification time instead (hashing 15 GB of weights per evaluation would cost more than the evaluation);
  - a hub id: sha256 of the id (no revision is known offline).

* The checkpoint folder layout these need: :func:`is_checkpoint_folder`, what ``from_pretrained`` loads of a
  checkpoint argument (:func:`model_path`, :func:`reference_model_path`), the run that owns it
  (:func:`owning_run`).

A base module (standard library only): configs of every stage, the training and evaluation stages, the tasks and
the catalog all name runs and checkpoints the same way without importing each other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from care.errors import CareError

RUN_ID_DIGITS = 10
LARGE_FILE_BYTES = 64 * 2**20


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else str(value)


def digest(payload: Any, length: int = 32) -> str:
    """The first ``length`` hex digits of the sha256 of ``payload`` as canonical JSON (sorted keys; pydantic
    models as their JSON dump, anything else JSON cannot hold by ``str``).

    >>> digest({"b": 1, "a": [1, 2]}, 12) == digest({"a": [1, 2], "b": 1}, 12)
    True
    >>> len(digest("x"))
    32
    """
    blob = json.dumps(payload, sort_keys=True, default=_plain)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_id(prefix: str, payload: Any) -> str:
    """``<prefix>-<10 hex digits of the payload's digest>``: the id of a run defined by ``payload``.

    >>> run_id("sft", {"steps": 4})
    'sft-aca5c73d01'
    """
    return f"{prefix}-{digest(payload, RUN_ID_DIGITS)}"


def is_checkpoint_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p / "policy").is_dir() and (p / "MANIFEST.json").is_file()


def checkpoint_id(checkpoint: str | Path) -> str:
    """Content id of a checkpoint folder: sha256 of its manifest (which lists every file's sha256), 16 hex digits."""
    manifest = Path(checkpoint) / "MANIFEST.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]


def content_id(checkpoint: str) -> str:
    """Content id (16 hex digits) of a checkpoint folder, model folder or hub id (see the module docstring)."""
    path = Path(checkpoint)
    if is_checkpoint_folder(path):
        return checkpoint_id(path)
    sha = hashlib.sha256()
    if not path.is_dir():
        sha.update(f"hub:{checkpoint}".encode())
        return sha.hexdigest()[:16]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        sha.update(str(file.relative_to(path)).encode() + b"\0")
        if stat.st_size > LARGE_FILE_BYTES:
            sha.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            sha.update(hashlib.sha256(file.read_bytes()).digest())
    return sha.hexdigest()[:16]


def model_path(checkpoint: str) -> str:
    """What ``from_pretrained`` loads: ``<checkpoint>/policy`` for a checkpoint folder, else the argument."""
    return str(Path(checkpoint) / "policy") if is_checkpoint_folder(checkpoint) else checkpoint


def reference_model_path(checkpoint: str) -> str:
    """``<checkpoint>/reference`` (the EMA or frozen reference the checkpoint holds)."""
    if not (Path(checkpoint) / "reference").is_dir():
        raise CareError(f"{checkpoint}: likelihood_model 'reference' needs a checkpoint folder with reference/; "
                        "use 'policy' or a model folder")
    return str(Path(checkpoint) / "reference")


def owning_run(checkpoint: str) -> str | None:
    """``<run>`` when the checkpoint lives at ``.../runs/<run>/checkpoints/<name>``."""
    parts = Path(checkpoint).resolve().parts if Path(checkpoint).exists() else ()
    if len(parts) >= 4 and parts[-2] == "checkpoints" and parts[-4] == "runs":
        return parts[-3]
    return None
