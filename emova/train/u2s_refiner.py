"""The `refiner` stage: a flow-matching mel refiner (`emova.speech.refiner`) trained on the trained U2S.

Every training rendering is decoded teacher-forced by the frozen U2S (its own durations, F0 and reference
style, as for `vocoder_gta`), so the U2S mel `mu` lines up frame by frame with the real mel; the refiner
learns to draw the real mel given `mu`, the F0 and the style. Random crops of `refiner_segment` frames,
AdamW, the stages' cosine schedule under a step / minute budget, checkpoints that resume.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from emova.speech.refiner import MelRefiner, MelRefinerConfig, refiner_input_f0
from emova.speech.style_encoder import StyleEncoderConfig
from emova.train.accel import fresh_accelerator, optimizer_step
from emova.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from emova.train.plots import plot_log
from emova.train.u2s import (
    U2SBundle,
    U2STrainConfig,
    _init_from_detokenizer,
    _keep_last,
    _lr,
    _open_log,
    _u2s_stage_checkpoint,
    teacher_forced_mels,
)
from emova.train.u2s_data import U2SData


def _frozen_u2s(cfg: U2STrainConfig) -> tuple[U2SBundle, str]:
    """The U2S the refiner serves: the u2s / finetune stage's last checkpoint, else `init_from`'s."""
    bundle = U2SBundle(cfg.exported_u2s_config(), StyleEncoderConfig.from_dict(cfg.style_encoder))
    ck = _u2s_stage_checkpoint(cfg, required=False)
    if ck is not None:
        load_checkpoint(ck, bundle)
        src = str(ck)
    elif cfg.init_from:
        _init_from_detokenizer(bundle, cfg.init_from)
        src = f"{cfg.init_from} (U2S)"
    else:
        raise ValueError(f"the refiner stage needs a trained U2S: no {'finetune' if cfg.finetune else 'u2s'} "
                         f"checkpoint under {cfg.out_dir} and no init_from")
    return bundle.eval().requires_grad_(False), src


def mel_statistics(data: U2SData, max_items: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and standard deviation of the cached real log-mels (the refiner's normalisation)."""
    rng = random.Random(0)
    pick = rng.sample(range(len(data)), min(len(data), max_items))
    m = np.concatenate([data.mel[i].astype(np.float32) for i in pick])
    return torch.from_numpy(m.mean(0)), torch.from_numpy(m.std(0))


def train_refiner(cfg: U2STrainConfig, progress: bool = True) -> Path:
    torch.manual_seed(cfg.seed + 3)
    run = Path(cfg.out_dir) / "refiner"
    run.mkdir(parents=True, exist_ok=True)
    bundle, u2s_from = _frozen_u2s(cfg)
    data = U2SData(cfg.cache_dir, cfg.speaking_voices(), cfg.augment_tags())
    seg = cfg.refiner_segment
    ids = [i for i in range(len(data)) if len(data.mel[i]) >= 8]
    if not ids:
        raise ValueError("refiner: no cached renderings")
    rcfg = cfg.refiner_config()
    model = MelRefiner(rcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.refiner_lr, weight_decay=0.01, betas=(0.9, 0.99))
    ck = latest_checkpoint(run)
    step, elapsed0 = 0, 0.0
    if ck is not None:
        meta = load_checkpoint(ck, model, opt)
        model.set_normalisation(torch.tensor(meta["mel_mean"]), torch.tensor(meta["mel_std"]))
        step, elapsed0 = meta["step"], meta.get("elapsed", 0.0)
        print(f"resuming refiner from {ck} (step {step})")
    else:
        model.set_normalisation(*mel_statistics(data))
        print("refiner: U2S from", u2s_from)
    mu_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def teacher_forced(batch_ids: list[int]) -> None:
        todo = [i for i in dict.fromkeys(batch_ids) if i not in mu_cache]
        if todo:
            for i, (mel, style) in zip(todo, teacher_forced_mels(bundle, data, todo)):
                mu_cache[i] = (mel.to(torch.float16), style)

    acc = fresh_accelerator(cfg.bf16)
    model, opt = acc.prepare(model, opt)
    logf, writer = _open_log(run / "log.csv", ["step", "lr", "loss", "elapsed_s"], step == 0)
    bar = tqdm(total=cfg.refiner_steps, initial=step, desc="train refiner", unit="step", disable=not progress)
    t0 = time.time() - elapsed0
    model.train()
    inner = acc.unwrap_model(model)

    def save() -> None:
        save_checkpoint(run / f"step-{step}", inner, opt,
                        {"step": step, "elapsed": time.time() - t0, "mel_mean": inner.cfg.mel_mean,
                         "mel_std": inner.cfg.mel_std, "config": inner.cfg.to_dict(), "u2s_from": u2s_from})
        _keep_last(run)

    while step < cfg.refiner_steps and not (cfg.refiner_minutes and time.time() - t0 > 60 * cfg.refiner_minutes):
        rng = random.Random(cfg.seed * 7919 + step)
        pick = [rng.choice(ids) for _ in range(cfg.refiner_batch)]
        teacher_forced(pick)
        mels, mus, f0s, masks, styles = [], [], [], [], []
        for i in pick:
            n = len(data.mel[i])
            o = rng.randrange(0, max(1, n - seg + 1))
            e = min(n, o + seg)
            pad = seg - (e - o)
            mel = torch.from_numpy(data.mel[i][o:e].astype(np.float32))
            mu = mu_cache[i][0][o:e].float()
            f0 = refiner_input_f0(torch.from_numpy(data.lf0[i][o:e]), torch.from_numpy(data.vuv[i][o:e].astype(np.float32)))
            mels.append(torch.nn.functional.pad(mel, (0, 0, 0, pad)))
            mus.append(torch.nn.functional.pad(mu, (0, 0, 0, pad)))
            f0s.append(torch.nn.functional.pad(f0, (0, 0, 0, pad)))
            masks.append(torch.arange(seg) < e - o)
            styles.append(mu_cache[i][1])
        mel, mu, f0 = torch.stack(mels), torch.stack(mus), torch.stack(f0s)
        mask = torch.stack(masks).float()[..., None]
        style = torch.stack(styles)
        lr = _lr(step, time.time() - t0, cfg.refiner_lr, 200, cfg.refiner_steps, cfg.refiner_minutes)
        with acc.autocast():
            loss = inner.loss(mel, mu, f0, style, mask)
        optimizer_step(acc, opt, model.parameters(), loss, lr)
        step += 1
        bar.update()
        if step % cfg.log_every == 0:
            writer.writerow([step, f"{lr:.3e}", f"{loss.item():.4f}", f"{time.time() - t0:.1f}"])
            logf.flush()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % cfg.save_every == 0:
            save()
    bar.close()
    logf.close()
    save()
    plot_log(run / "log.csv", ("loss",))
    return run


def _load_refiner(run: str | Path, **overrides) -> tuple[MelRefiner, dict, Path]:
    """A refiner run's latest weights with the normalisation they were trained with (`overrides`: inference
    settings such as steps / temperature), its checkpoint state and path."""
    ck = latest_checkpoint(Path(run) / "refiner")
    if ck is None:
        raise ValueError(f"no refiner checkpoint under {run}/refiner; run the refiner stage")
    meta = json.loads((ck / "state.json").read_text())
    model = MelRefiner(replace(MelRefinerConfig.from_dict(meta["config"]), **overrides))
    load_checkpoint(ck, model)
    model.set_normalisation(torch.tensor(meta["mel_mean"]), torch.tensor(meta["mel_std"]))
    return model.eval(), meta, ck


def load_trained_refiner(cfg: U2STrainConfig, u2s_checkpoint: str | Path | None = None) -> tuple[MelRefiner, str]:
    """The refiner stage's latest weights. With `u2s_checkpoint` (what export loads), a refiner trained on
    another U2S is refused: it learned that U2S's mels."""
    model, meta, ck = _load_refiner(cfg.out_dir)
    if u2s_checkpoint is not None and meta.get("u2s_from") != str(u2s_checkpoint):
        raise ValueError(f"the refiner in {ck} was trained on the U2S of {meta.get('u2s_from')}, export uses "
                         f"{u2s_checkpoint}: run the refiner stage again (with a fresh {cfg.out_dir}/refiner)")
    return model, str(ck)


def attach_refiner(detokenizer: str | Path, run: str | Path, out: str | Path, steps: int | None = None,
                   temperature: float | None = None) -> Path:
    """Save a copy of a detokenizer with the refiner of a refiner run (trained on that detokenizer's U2S,
    `init_from`) between its U2S and vocoder; `steps` / `temperature` override its inference settings."""
    from emova.assets import read_config, resolve_model_dir
    from emova.speech.detokenizer import SpeechDetokenizer

    overrides = {k: v for k, v in (("steps", steps), ("temperature", temperature)) if v is not None}
    refiner, meta, ck = _load_refiner(run, **overrides)
    d = resolve_model_dir(detokenizer, "speech_detokenizer")
    detok = SpeechDetokenizer.from_pretrained(d)
    detok.refiner = refiner
    info = {k: v for k, v in read_config(d, "speech detokenizer").get("info", {}).items() if k != "prototype_counts"}
    return detok.save_pretrained(out, info={**info, "refiner_checkpoint": str(ck), "refiner_u2s": meta.get("u2s_from")})


def main(argv: list[str] | None = None) -> None:
    """`python -m emova.train.u2s_refiner --detokenizer DIR --run RUN --out DIR`: attach a trained refiner."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m emova.train.u2s_refiner", description=attach_refiner.__doc__.split("\n")[0])
    p.add_argument("--detokenizer", default="emova-tiny")
    p.add_argument("--run", required=True, help="a U2S run directory with a refiner stage")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=None, help="Euler steps at inference (default: the refiner's)")
    p.add_argument("--temperature", type=float, default=None, help="scale of the source noise at inference")
    a = p.parse_args(argv)
    print("saved", attach_refiner(a.detokenizer, a.run, a.out, a.steps, a.temperature))


if __name__ == "__main__":  # pragma: no cover
    main()
