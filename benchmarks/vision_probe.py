"""What does the LLM get to see? Linear probes on an omni model's vision features, tower vs projector.

    python benchmarks/vision_probe.py [--model emova-tiny] [--steps 400] [--out docs/results/vision_probe.json]

The labels are those of the vision pretraining step (`emova.train.vision_pretrain.HEADS`: shape, colour,
slot, object centre, written word/digit per 2x2-merged token). Frozen model; one linear head per label
kind is trained (Adam, batch 32 fresh training-split scenes a step) on the tower's merged tokens and,
separately, on the projector's output (what the LLM receives), then scored on 256 held-out-split scenes.
`*_on_positive` counts only the tokens that carry something (an object, a centre, text), which the
majority class cannot inflate. A label the tower keeps and the projector loses is one the LLM cannot use.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from emova.assets import resolve_model_dir
from emova.convert.model import load_emova_model
from emova.model.config_loader import load_model_config
from emova.model.vision import encode_images
from emova.train.vision_pretrain import HEADS, SceneBatches, VisionPretrainConfig, head_losses


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="emova-tiny", help="a bundled name, a model directory or an llm/ directory")
    p.add_argument("--config", default="tiny", help="model config whose image settings the model was trained with")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="reports/vision_probe.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_emova_model(resolve_model_dir(a.model, "llm"), dtype=torch.float32).eval()  # the LLM alone
    settings = load_model_config(a.config).image_processor
    cfg = VisionPretrainConfig(batch_size=32, text_prob=0.5)
    train, held = SceneBatches(cfg, settings, "train"), SceneBatches(cfg, settings, "heldout")

    @torch.no_grad()
    def feats(batch: dict) -> dict[str, torch.Tensor]:
        tower = encode_images(model.vision_tower, batch["pixel_values"], batch["grid_thw"])  # (N, D_vision)
        return {"tower": tower, "projector": model.mm_projector(tower)}  # projector: (N, D_llm)

    torch.manual_seed(0)  # the probes' initialisation, whatever the loader drew
    dims = {k: v.shape[-1] for k, v in feats(train.batch(0, 2)).items()}
    probes = {s: torch.nn.ModuleDict({k: torch.nn.Linear(d, len(c)) for k, c in HEADS.items()}) for s, d in dims.items()}
    opts = {s: torch.optim.Adam(pr.parameters(), 3e-3) for s, pr in probes.items()}
    t0 = time.time()
    for step in range(a.steps):
        batch = train.batch(step + 1)
        f = feats(batch)
        for s, pr in probes.items():
            loss = sum(head_losses({k: h(f[s]) for k, h in pr.items()}, batch["labels"]).values())
            opts[s].zero_grad()
            loss.backward()
            opts[s].step()
        if step % 100 == 0:
            print(f"step {step} loss {float(loss):.3f} {time.time() - t0:.0f}s", flush=True)
    hit: dict[str, float] = {}
    tot: dict[str, float] = {}
    with torch.no_grad():
        for b in range(4):
            batch = held.batch(10_000_000 + b, 64)
            f = feats(batch)
            for s, pr in probes.items():
                for k, h in pr.items():
                    lab, pred = batch["labels"][k], h(f[s]).argmax(-1)
                    for name, sel in ((f"{s}/{k}", torch.ones_like(lab, dtype=torch.bool)), (f"{s}/{k}_on_positive", lab != 0)):
                        hit[name] = hit.get(name, 0.0) + float((pred[sel] == lab[sel]).sum())
                        tot[name] = tot.get(name, 0.0) + float(sel.sum())
    acc = {k: round(hit[k] / tot[k], 4) for k in sorted(hit)}
    for k in HEADS:
        print(f"{k:8s} tower {acc[f'tower/{k}_on_positive']:.3f}  projector {acc[f'projector/{k}_on_positive']:.3f}  (on positive tokens)")
    res = {"model": a.model, "steps": a.steps, "heldout_images": 256, "accuracy": acc}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
