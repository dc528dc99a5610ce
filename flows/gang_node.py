"""The ``gang-node`` flow: one node of an RL run's rank gang on a machine other than the flow's.

Submitted by the ``rl`` flow (``tasks.gang_nodes``) once per node it does not start itself, as a run of the
``gang-node`` deployment on the gpu pool. It runs that node's torchrun agent in the foreground
(``care.train.gang.run_node``): its ranks join the gang through the c10d rendezvous, take commands from the
driver's control store, and exit when the driver stops the gang or disappears; the flow run then ends. A
non-zero exit fails the flow run, and the driver names the node (``GangError``).
"""

from __future__ import annotations

from prefect import flow

from care.errors import CareError
from care.train.gang import GangSpec, run_node


@flow(name="gang-node", log_prints=True)
def gang_node(nproc_per_node: int, nnodes: int, rdzv_endpoint: str, control: str, run_key: str = "care") -> int:
    """Run ``nproc_per_node`` ranks of the gang whose control store is at ``control`` (host:port)."""
    spec = GangSpec(nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, local_nodes=1)
    print(f"gang node of {run_key}: {nproc_per_node} rank(s), rendezvous {rdzv_endpoint}, control {control}")
    code = run_node(spec, control, run_key=run_key)
    if code != 0:
        raise CareError(f"the gang node's torchrun agent exited with status {code}")
    print("gang node done")
    return code
