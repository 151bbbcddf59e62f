"""Seconds per LLM training step, three ways side by side on the same batches (forward + backward, bf16 autocast).

    python benchmarks/train_step.py [--config tiny_stage3] [--init-from runs/omni/stage2/final]
                                    [--batches 30] [--rounds 3] [--threads 2] [--out PATH]

Variants, interleaved round by round so that a noisy machine affects them alike:
* `lm_loss+sdpa` — the LM's own `labels=` loss (output head and softmax on every position), SDPA attention:
  how the stages trained until 2026-12-03;
* `supervised+sdpa` — `OmniLossModule`: the output head on the supervised positions only;
* `supervised+eager` — the same with the eager (matmul + softmax) attention, the tiny configs' setting.
The batches are the stage's own (its records, mixing and length-grouped plan, epoch 0), the first `--batches`
of the plan; every variant must give the same mean loss (printed) — only the speed may differ.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from emova.data.omni_dataset import batch_plan
from emova.train.omni import (
    OmniLossModule,
    OmniTrainConfig,
    _Collate,
    build_dataset,
    build_processor,
    build_stage_model,
)


class _LMLoss(OmniLossModule):
    """The pre-2026-12-03 loss: the LM computes logits for every position."""

    @staticmethod
    def supervised_loss(base, embeds, attention_mask, labels):  # type: ignore[override]
        return base.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                                   use_cache=False).loss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="tiny_stage3")
    ap.add_argument("--init-from", default="runs/omni/stage2/final")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/results/bench_train_step.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = OmniTrainConfig.load(a.config, init_from=a.init_from, out_dir="/tmp/bench_train_step")
    proc = build_processor(cfg)
    model, _ = build_stage_model(cfg)
    ds = build_dataset(cfg, proc)
    plan = batch_plan(ds.lengths, cfg.batch_size, cfg.seed, 0)[: a.batches]
    fetch = _Collate(ds, proc)
    batches = [fetch(b) for b in plan]
    n_tokens = sum(int(b["input_ids"].numel()) for b in batches)
    n_sup = sum(int((b["labels"] != -100).sum()) for b in batches)
    variants = {"lm_loss+sdpa": (_LMLoss(model), "sdpa"), "supervised+sdpa": (OmniLossModule(model), "sdpa"),
                "supervised+eager": (OmniLossModule(model), "eager")}
    times: dict[str, list[float]] = {k: [] for k in variants}
    losses: dict[str, float] = {}
    for r in range(a.rounds + 1):  # round 0 warms up (allocator, kernels) and is not counted
        for name, (module, attn) in variants.items():
            model.language_model.set_attn_implementation(attn)
            total, t0 = 0.0, time.perf_counter()
            for b in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = module(b)
                loss.backward()
                model.zero_grad(set_to_none=True)
                total += float(loss.detach())
            if r:
                times[name].append((time.perf_counter() - t0) / len(batches))
            losses[name] = total / len(batches)
            print(f"round {r} {name}: {(time.perf_counter() - t0) / len(batches):.3f} s/step", flush=True)
    base = statistics.median(times["lm_loss+sdpa"])
    result = {"config": a.config, "init_from": a.init_from, "threads": a.threads, "batches": len(batches),
              "batch_size": cfg.batch_size, "tokens_per_batch": n_tokens / len(batches),
              "supervised_share": n_sup / n_tokens, "rounds": a.rounds,
              "variants": {k: {"s_per_step_median": statistics.median(v), "s_per_step": v,
                               "speedup_vs_lm_loss_sdpa": base / statistics.median(v), "mean_loss": losses[k]}
                           for k, v in times.items()}}
    print(json.dumps(result["variants"], indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
