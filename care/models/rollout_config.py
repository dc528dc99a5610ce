"""Typed options of the rollout stage: the generation engine (transformers ``generate`` or vLLM), its decoding
parameters and the group shape. Part of ``RLConfig`` (``rollout:``); here, beside the rollout backends that read
them (``care.models.generation``, ``care.models.vllm_backend``), so a backend does not import the training package.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from care.config import StageConfig


class SamplingParams(StageConfig):
    """Decoding parameters. All are set explicitly on every call: a model's generation_config can silently
    override library defaults otherwise."""

    temperature: float = Field(1.0, gt=0, description="Softmax temperature for sampling.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(50, ge=0, description="Top-k sampling; 0 disables it.")
    max_new_tokens: int = Field(768, ge=1, description="Maximum completion length in tokens.")
    eos: Literal["care", "reference"] = Field(
        "care", description="What ends a completion (kept as its last token): 'care' = <|im_end|> only; "
        "'reference' = <|im_end|> or <|endoftext|>, the Qwen2.5-VL generation config's EOS list that the "
        "reference code's generate uses. Both backends stop on the same ids.")


class RolloutConfig(StageConfig):
    backend: Literal["hf", "vllm"] = Field("hf", description="Generation engine: transformers generate, or vLLM (GPU, own environment).")
    prompt: Literal["care", "reference"] = Field(
        "care", description="Prompt template (care.algo.prompt): 'care' = the short versioned instruction; "
        "'reference' = the reference code's training prompt, reproduced exactly. Recorded with every rollout "
        "(prompt_template); scoring and the update rebuild each rollout's prompt from the recorded template.")
    group_size: int = Field(8, ge=2, description="G: completions sampled per prompt.")
    prompts_per_iteration: int = Field(4, ge=1, description="Prompts per generation batch (one RL iteration).")
    generation_batch_prompts: int = Field(4, ge=1, description="Prompts per generate() call (a memory knob; the per-call seed depends on it, so it is part of the config).")
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    behaviour_logprobs: Literal["auto", "sampler", "forward"] = Field(
        "auto", description="Where the hf backend's behaviour log-probs come from: 'sampler' records them while "
        "sampling (no extra pass; equal to a forward pass up to float rounding of the KV-cache), 'forward' runs one "
        "more forward pass with the update's own function (the same computation as the update's first log-probs, "
        "which PPO ratios over several steps want, above all in bf16). auto = forward when optim.steps_per_generation > 1, "
        "else sampler (the update does not read them then).")
    vllm_python: str | None = Field(None, description="Python of the separate vLLM environment (backend=vllm).")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor-parallel size (backend=vllm).")
    vllm_gpu_memory_utilization: float = Field(0.6, gt=0, le=1, description="vLLM GPU memory share (backend=vllm).")
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights and activations of the vLLM engine (backend=vllm). auto = bfloat16 on a GPU, "
        "float32 on CPU (vLLM would otherwise downcast fp32 checkpoints to bf16 silently).")
    vllm_enforce_eager: bool | None = Field(
        None, description="Run the vLLM engine eagerly, without torch.compile and CUDA graphs (backend=vllm). "
        "None = eager on CPU (start-up 36 s instead of about 100 s, and faster there), compiled on a GPU.")
    vllm_cpu_kvcache_gib: int = Field(
        1, ge=1, description="GiB of KV cache the vLLM engine reserves on a CPU-only machine (backend=vllm); "
        "vLLM's own default takes a share of all RAM.")
    vllm_resident: bool = Field(
        True, description="Keep one vLLM engine for the whole run (backend=vllm): started at the first rollout "
        "stage, its weights refreshed in place (vLLM's reload_weights) from each later stage's policy folder, "
        "asleep between stages on a GPU, stopped at the end of the run. False = a fresh engine per rollout stage "
        "(an engine start each iteration: about 36 s eager on CPU, minutes for a 7B model on a GPU).")
