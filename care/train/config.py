"""Typed configuration of the RL loop: one frozen model per stage, composed into ``RLConfig``.

Defaults are the reference runs' hyperparameters (GRPO_CARE.md section 7) unless a field says otherwise; the demo
config (``care/configs/demo.yaml``) shrinks them for a tiny model on CPU. The same models are the Prefect flows'
parameter schemas, so a deployment's parameters are validated exactly like a YAML file.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from care import identity
from care.algo.algorithms import algorithm, registered_algorithms
from care.config import StageConfig
from care.eval_schema import EvalConfig
from care.media.sampling import FrameSampling
from care.models.rollout_config import RolloutConfig
from care.sections import section_of
from care.tracking import TRACKING_FIELDS, TrackingOptions
from care.train.optimizer_config import OptimizerConfig

# the registered algorithms (care.algo.algorithms), spelled out for the parameter schema of the flows
AlgorithmName = Literal["grpo_care", "grpo", "grpo_nokl", "dr_grpo", "rloo"]


class ScoringConfig(StageConfig):
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 1.0, "format": 1.0},
        description="Base rewards by registry name and weight (care.algo.rewards).",
    )
    bonus_weight: float = Field(0.5, ge=0, description="lambda: bonus = lambda * accuracy for consistent correct samples.")
    bonus_margin: float = Field(0.0, ge=0, description="Tolerance below the group's mean likelihood (0 for SEED-Bench-R1, 0.01 transfer).")
    confidence_upper_bound: float = Field(0.95, gt=0, le=1, description="Clamp of the answer likelihood p_i.")
    reproduce_reference: bool = Field(False, description="Score as the reference code: its token rule for the answer "
                                      "span, its mean, and the bonus statistic per device batch in float32 "
                                      "(docs/algorithm.md).")
    reference_prompts_per_device: int = Field(1, ge=1, description="With reproduce_reference: consecutive prompts "
                                              "pooled into one bonus statistic, as one device's batch (1 in the "
                                              "released runs).")
    scoring_batch_size: int = Field(16, ge=1, description="Rollouts per reference-model forward.")

    @model_validator(mode="before")
    @classmethod
    def _the_algorithm_is_chosen_by_algo(cls, data):
        # one switch (RLConfig.algo, care.algo.algorithms) says the estimator and whether the bonus is added
        if isinstance(data, dict):
            for gone in ("consistency_bonus", "advantage"):
                if gone in data:
                    raise ValueError(f"scoring.{gone} is set by the algorithm: choose `algo` instead (one of "
                                     f"{', '.join(registered_algorithms())}; docs/algorithm.md)")
        return data


# OptimConfig fields of where the ranks run, not what they compute
PLACEMENT = ("nnodes", "rdzv_endpoint", "local_nodes", "control_host", "node_deployment")


class OptimConfig(OptimizerConfig):
    """The update (``optim:``): the shared optimizer options (``OptimizerConfig``, RL's defaults) and the
    policy-gradient step's own."""

    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    steps_per_generation: int = Field(1, ge=1, description="Optimizer steps per generation batch (1 = reference, on-policy).")
    micro_batch_size: int = Field(8, ge=1, description="Rollouts per forward/backward; gradients are accumulated over the step.")
    loss_aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = Field(
        "seq_mean_token_mean", description="Loss aggregation: reference (per-sequence mean), DAPO token mean, Dr.GRPO."
    )
    eps_low: float = Field(0.2, ge=0, description="PPO clip range below 1 (used when steps_per_generation > 1).")
    eps_high: float = Field(0.2, ge=0, description="PPO clip range above 1 (used when steps_per_generation > 1).")
    kl_beta: float = Field(0.0, ge=0, description="KL penalty weight against the reference (0 = none, as GRPO-CARE).")
    kl_estimator: Literal["k1", "k3"] = Field("k3", description="KL estimator when kl_beta > 0.")
    ref_mode: Literal["ema", "frozen"] = Field("ema", description="Reference model: slowly evolving EMA, or frozen initial policy.")
    ema_decay: float = Field(0.995, ge=0, le=1, description="EMA decay of the reference.")
    ema_every: int = Field(10, ge=1, description="Update the EMA reference every this many optimizer steps.")
    num_processes: int = Field(1, ge=1, description="Data-parallel processes (torchrun) for the update.")
    parallelism: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="With num_processes > 1: 'ddp' keeps the whole fp32 state on every rank; 'fsdp2' shards "
        "policy, reference and AdamW moments over the ranks (torch fully_shard) and writes sharded checkpoints "
        "(torch.distributed.checkpoint), which a 7B model needs.")
    nnodes: int = Field(1, ge=1, description="Nodes the num_processes ranks span (num_processes / nnodes per node); "
                        "more than 1 needs rdzv_endpoint (torchrun's c10d rendezvous).")
    rdzv_endpoint: str | None = Field(None, description="host:port of torchrun's c10d rendezvous across nodes "
                                      "(nnodes > 1); every node runs the same torchrun command (docs/scaling.md).")
    local_nodes: int | None = Field(None, ge=1, description="How many of the nnodes nodes the flow's machine starts "
                                    "itself (None = all: nodes as processes on one machine, e.g. a test); 1 on a "
                                    "cluster, where the other nodes join from their own machines.")
    control_host: str = Field("127.0.0.1", description="Address at which the ranks reach the flow's control store "
                              "(this machine's address on a cluster).")
    node_deployment: str | None = Field(None, description="Prefect deployment ('flow/deployment') that starts each "
                                        "node the flow's machine does not (nnodes > local_nodes): one flow run per "
                                        "node, e.g. 'gang-node/gang-node' on the gpu pool (deployments/prefect.yaml). "
                                        "None: start them by hand with the command the run prints.")

    def identity(self) -> dict:
        """What of the settings changes an update (where the ranks run does not: a run resumes on other nodes)."""
        return self.model_dump(mode="json", exclude=set(PLACEMENT))

    @model_validator(mode="after")
    def _nodes_divide_processes(self) -> OptimConfig:
        if self.num_processes % self.nnodes:
            raise ValueError(f"num_processes={self.num_processes} is not a multiple of nnodes={self.nnodes}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"nnodes={self.nnodes} needs rdzv_endpoint (host:port of the c10d rendezvous)")
        return self


class EvalTiming(section_of(FrameSampling, keep=["temporal"])):
    """The periodic evaluation's frames are the run's; only their positions in time are the evaluation's own."""


class PeriodicEval(section_of(EvalConfig, omit=["checkpoint", "data_root", "frames"])):
    """Options of the periodic evaluation (``eval_every``): EvalConfig's, less what the run fills in (checkpoint,
    data_root, and frames: the run's). ``prompt`` unset = the run's ``rollout.prompt``."""

    frames: EvalTiming = Field(default_factory=EvalTiming, description="Only ``temporal``: how the evaluation "
                               "positions the run's frames in time (default the real fps, as the reference "
                               "evaluates whatever it trained with).")


# options that do not change what is trained stay out of a run's identity: the same run can be continued with
# another checkpoint cadence or retention (a replayed update equals the original bit for bit)
NOT_IDENTITY = ("run_name", "eval_every", "eval", "checkpoint_every", "checkpoint_background", "keep_checkpoints",
                "keep_every", *TRACKING_FIELDS)


class RLConfig(TrackingOptions):
    """A GRPO / GRPO-CARE run: which model and data, how many iterations, and each stage's options."""

    run_name: str | None = Field(None, description="Run id; default derives from the config hash so a re-run resumes it.")
    algo: AlgorithmName = Field("grpo_care", description="The RL algorithm (care.algo.algorithms): its advantage "
                                "estimator, consistency bonus and KL defaults. grpo_care = GRPO-CARE; grpo = the "
                                "paper's GRPO baseline (KL k3, beta 0.1, frozen reference); grpo_nokl, dr_grpo, rloo.")
    model: str = Field(..., description="Initial policy: a local save_pretrained folder or a hub id (GPU machines).")
    data_root: str = Field(..., description="SEED-Bench-R1-layout root (annotations/, videos/, images/).")
    train_annotations: str = Field("training_6k.jsonl", description="Training file, relative to data_root/annotations.")
    shuffle_options: bool = Field(True, description="Shuffle the 4 options per training row (seeded).")
    frames: FrameSampling = Field(default_factory=FrameSampling, description="Frame sampling of the frame cache to read (as preprocessed).")
    iterations: int = Field(1500, ge=1, description="Generation batches (RL iterations) to run; the paper's is one epoch of the 6k training subset at 4 prompts per batch, about 1500.")
    seed: int = Field(0, description="Seeds data order, sampling and initialisation.")
    checkpoint_every: int = Field(10, ge=1, description="Write a resumable checkpoint every K iterations (and after the "
                                  "last one and at every evaluation). In between, the state stays in memory and a "
                                  "resume replays the updates since the newest checkpoint from the logged shards "
                                  "(docs/reliability.md), on every rank of the gang alike with optim.num_processes > 1.")
    checkpoint_background: bool = Field(True, description="Write periodic checkpoints from a snapshot in a background "
                                        "thread while training goes on (one in flight at a time).")
    keep_checkpoints: int = Field(2, ge=0, description="Keep the newest N iteration checkpoints (0 = keep all); the newest "
                                  "complete one, which a resume starts from, is never removed.")
    keep_every: int = Field(0, ge=0, description="Also keep every checkpoint whose iteration is a multiple of this (for "
                            "later evaluation; 0 = none).")
    eval_every: int = Field(0, ge=0, description="Evaluate the checkpoint every N iterations (0 = never from the rl flow).")
    eval: PeriodicEval = Field(default_factory=PeriodicEval, description="EvalConfig options of the periodic "
                               "evaluation (checkpoint, data_root, frames filled in by the run).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)

    @model_validator(mode="before")
    @classmethod
    def _resolve_behaviour_logprobs(cls, data):
        # 'auto' needs the optimiser's settings, which the rollout stage does not see: decide it here
        if not isinstance(data, dict):
            return data
        optim, rollout = data.get("optim") or {}, data.get("rollout") or {}
        if not isinstance(optim, dict | OptimConfig) or not isinstance(rollout, dict | RolloutConfig):
            return data  # field validation reports the type error
        steps = optim.steps_per_generation if isinstance(optim, OptimConfig) else optim.get("steps_per_generation", 1)
        try:
            choice = "forward" if int(steps) > 1 else "sampler"
        except (TypeError, ValueError):
            return data  # field validation names the bad value
        if isinstance(rollout, RolloutConfig):
            if rollout.behaviour_logprobs == "auto":
                rollout = rollout.model_copy(update={"behaviour_logprobs": choice})
        elif rollout.get("behaviour_logprobs", "auto") == "auto":
            rollout = {**rollout, "behaviour_logprobs": choice}
        return {**data, "rollout": rollout}

    @model_validator(mode="before")
    @classmethod
    def _algorithm_fills_the_update(cls, data):
        # the algorithm's KL settings (care.algo.algorithms) wherever optim leaves them unset
        if not isinstance(data, dict) or data.get("algo", "grpo_care") not in registered_algorithms():
            return data  # field validation names the bad value
        defaults = algorithm(data.get("algo", "grpo_care")).optim_defaults
        optim = data.get("optim") or {}
        if isinstance(optim, OptimConfig):
            unset = {k: v for k, v in defaults.items() if k not in optim.model_fields_set}
            return {**data, "optim": optim.model_copy(update=unset)} if unset else data
        if isinstance(optim, dict):
            return {**data, "optim": {**defaults, **optim}}
        return data

    def eval_config(self, checkpoint: str) -> EvalConfig:
        """The periodic evaluation's config (validated when the RL config is): the run's frames, positioned in
        time as the ``eval.frames.temporal`` says (default the real fps, as the reference evaluates whatever
        it trained with), and the prompt the run trains with unless ``eval.prompt`` is set."""
        frames = {**self.frames.model_dump(), "temporal": self.eval.frames.temporal}
        return EvalConfig.model_validate({"prompt": self.rollout.prompt, **self.eval.model_dump(),
                                          "checkpoint": checkpoint, "data_root": self.data_root, "frames": frames})

    @model_validator(mode="after")
    def _eval_section_valid(self) -> RLConfig:
        if self.eval_every:
            try:
                self.eval_config("<checkpoint>")
            except ValueError as exc:
                raise ValueError(f"eval: {exc}") from None
        return self

    @model_validator(mode="after")
    def _processes_split_the_rollouts(self) -> RLConfig:
        # checked here, before any work: the update would refuse it only after rollouts and scoring had run
        rollouts = self.rollout.prompts_per_iteration * self.rollout.group_size
        if rollouts % self.optim.num_processes:
            raise ValueError(f"rollout.prompts_per_iteration * rollout.group_size = {rollouts} rollouts cannot be split "
                             f"evenly over optim.num_processes={self.optim.num_processes}; make it a multiple")
        return self

    def run_id(self) -> str:
        """``run_name``, or ``<algo>-<hash of the config>``: re-running the same config continues the same run."""
        if self.run_name:
            return self.run_name
        # options that do not change what is trained stay out of the identity
        exclude: dict = {**dict.fromkeys(NOT_IDENTITY, True), "optim": set(PLACEMENT), "rollout": {"vllm_resident"}}
        return identity.run_id(self.algo.replace("_", "-"), self.model_dump(mode="json", exclude=exclude))

    def checkpoint_due(self, iterations_done: int) -> bool:
        """Whether the state after ``iterations_done`` iterations is written as a checkpoint."""
        n = iterations_done
        return (n % self.checkpoint_every == 0 or n >= self.iterations
                or bool(self.eval_every and n % self.eval_every == 0))

    @property
    def total_optimizer_steps(self) -> int:
        return self.iterations * self.optim.steps_per_generation
