"""One rank of a multi-process optimisation stage: ``python -m care.train.optimise_worker JOB.json``.

Started by ``torchrun`` (see ``care.train.optimise_stage``); rank 0 writes the result JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from care.train.optimise_stage import run_job


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    result = run_job(job)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(job["result_path"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
