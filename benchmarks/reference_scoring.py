"""Reference scoring: answer-position-only LM head vs the naive full-logits forward, on the same batch.

The consistency bonus needs, for every rollout, the reference model's mean log-prob of the few answer tokens.
The naive way materialises ``[batch, tokens, vocab]`` logits (and their log-softmax); ours runs the decoder
body once and applies the LM head only where an answer token is predicted (care.algo.likelihood). With a
tiny body and Qwen's real vocabulary (151,936) the LM head dominates, which is the regime of the 7B model's
scoring batches too (its head is 3584 x 151,936).

Each method runs in its own fresh process, so the peak resident memory (``ru_maxrss``) of one cannot hide the
other's; reported memory is the peak during scoring minus the resident size just before it.

    python benchmarks/reference_scoring.py            # small defaults, < 1 min on 2 cores
    python benchmarks/reference_scoring.py --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time


def _build(args):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    heads = 4
    half = args.hidden // heads // 2
    t_sec = half // 4
    h_sec = (half - t_sec) // 2
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
            num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [t_sec, h_sec, half - t_sec - h_sec]},
            tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=1,
        ),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=args.hidden),
        image_token_id=args.vocab - 1, video_token_id=args.vocab - 2,
        vision_start_token_id=args.vocab - 3, vision_end_token_id=args.vocab - 4, tie_word_embeddings=True,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    g = torch.Generator().manual_seed(1)
    b, p, c = args.batch, args.prompt_len, args.completion_len
    input_ids = torch.randint(10, args.vocab - 10, (b, p + c), generator=g)
    attention_mask = torch.ones(b, p + c, dtype=torch.long)
    targets = torch.zeros(b, p + c, dtype=torch.bool)
    for row in range(b):
        pad = row % 4  # left padding of different widths, like a real prompt batch
        attention_mask[row, :pad] = 0
        input_ids[row, :pad] = 0
        end = p + c - 1 - (row % 3)  # answer near the end of the completion
        targets[row, end - args.answer_tokens : end] = True
    return model, {"input_ids": input_ids, "attention_mask": attention_mask}, targets


def _naive(model, inputs, targets):
    import torch

    logits = model(**inputs, use_cache=False).logits.float()  # [b, t, v]
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, inputs["input_ids"][:, 1:, None]).squeeze(-1)
    logp = torch.cat([torch.zeros(logp.shape[0], 1), logp], dim=1)
    return (logp * targets).sum(-1) / targets.sum(-1)


def _ours(model, inputs, targets):
    from care.algo.likelihood import answer_likelihood

    return answer_likelihood(model, inputs, targets, upper_bound=1.0).mean_logp


def _child(method: str, args, queue) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model, inputs, targets = _build(args)
    fn = _naive if method == "naive" else _ours
    with torch.no_grad():
        before_kb = _rss_kb()
        result = fn(model, inputs, targets)  # warm-up; also the peak-memory run
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn(model, inputs, targets)
            times.append(time.perf_counter() - start)
    queue.put({"method": method, "seconds": min(times), "peak_mb": max(peak_kb - before_kb, 0) / 1024,
               "mean_logp": result.tolist()})


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


def run(args) -> dict:
    ctx = mp.get_context("spawn")
    results = {}
    for method in ("naive", "ours"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(method, args, queue))
        proc.start()
        results[method] = queue.get(timeout=600)
        proc.join()
    diff = max(abs(a - b) for a, b in zip(results["naive"]["mean_logp"], results["ours"]["mean_logp"], strict=True))
    return {
        "config": vars(args),
        "naive_seconds": results["naive"]["seconds"], "ours_seconds": results["ours"]["seconds"],
        "speedup": results["naive"]["seconds"] / results["ours"]["seconds"],
        "naive_peak_mb": results["naive"]["peak_mb"], "ours_peak_mb": results["ours"]["peak_mb"],
        "memory_ratio": results["naive"]["peak_mb"] / max(results["ours"]["peak_mb"], 1e-3),
        "max_abs_diff_mean_logp": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="rollouts scored in one forward")
    parser.add_argument("--prompt-len", type=int, default=96)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--answer-tokens", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=151_936, help="Qwen2.5-VL tokenizer size")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    c = out["config"]
    print(f"batch {c['batch']} x {c['prompt_len'] + c['completion_len']} tokens, vocab {c['vocab']}, "
          f"hidden {c['hidden']} x {c['layers']} layers, {c['answer_tokens']} answer tokens per rollout")
    print(f"{'':22s}{'time (s)':>12s}{'peak memory (MB)':>20s}")
    print(f"{'naive full logits':22s}{out['naive_seconds']:12.4f}{out['naive_peak_mb']:20.1f}")
    print(f"{'answer positions only':22s}{out['ours_seconds']:12.4f}{out['ours_peak_mb']:20.1f}")
    print(f"ratio naive/ours: time {out['speedup']:.1f}x, memory {out['memory_ratio']:.1f}x; "
          f"max |mean logp difference| {out['max_abs_diff_mean_logp']:.2e}")


if __name__ == "__main__":
    main()
