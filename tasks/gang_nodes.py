"""Starting a gang's other nodes through Prefect: one ``gang-node`` deployment run per node.

``care.train.gang`` starts the nodes of the flow's own machine and asks the registered node launcher for the
others (``optim.node_deployment``, when ``nnodes > local_nodes``). This launcher submits one flow run of that
deployment per node, on its work pool (the gpu pool: each GPU worker runs one flow run at a time, so each node
run lands on a machine of its own), with the gang's shape, its control endpoint and its rendezvous. The run
ends when the gang does: its ranks exit on the driver's ``stop`` or when the driver's control store is gone.
A node run still waiting for a worker when the gang closes is cancelled.
"""

from __future__ import annotations

import dataclasses

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled

from care.train.gang import GangSpec

ENDED = {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}


@dataclasses.dataclass
class DeploymentNode:
    """One node of a gang as a flow run of the node deployment (``care.train.gang.RemoteNode``)."""

    flow_run_id: str
    name: str
    node_rank: int

    def describe(self) -> str:
        return f"node {self.node_rank}: flow run {self.name} ({self.flow_run_id})"

    def ended(self) -> str | None:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(self.flow_run_id).state
        if state is None or state.type not in ENDED:
            return None
        return f"flow run {self.name} of node {self.node_rank} is {state.type.value}: {state.message or ''}".strip()

    def cancel(self) -> None:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(self.flow_run_id, Cancelled(message="its gang closed"), force=True)


def node_parameters(spec: GangSpec, control: str, run_key: str) -> dict:
    """The ``gang-node`` flow's parameters: the node's torchrun shape, the rendezvous and the control store."""
    return {"nproc_per_node": spec.nproc_per_node, "nnodes": spec.nnodes, "rdzv_endpoint": spec.rdzv_endpoint,
            "control": control, "run_key": run_key}


def submit_nodes(spec: GangSpec, control: str, run_key: str, node_ranks: list[int]) -> list[DeploymentNode]:
    """One run of ``spec.node_deployment`` per node rank, returned without waiting (``timeout=0``)."""
    nodes = []
    for node_rank in node_ranks:
        name = f"{run_key}-node{node_rank}"
        run = run_deployment(spec.node_deployment, parameters=node_parameters(spec, control, run_key),
                             flow_run_name=name, timeout=0, as_subflow=False, tags=["care", "gang-node"])
        nodes.append(DeploymentNode(flow_run_id=str(run.id), name=name, node_rank=node_rank))
    return nodes
