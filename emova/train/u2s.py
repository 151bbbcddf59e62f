"""Training the tiny U2S detokenizer: cache → U2S + style encoder → vocoder → prototypes → export.

Stages (each resumable; the settings live in `emova.train.u2s_config`, the vocoder stages in
`emova.train.u2s_vocoder`, the refiner stage in `emova.train.u2s_refiner`, the export calibrations in
`emova.train.u2s_calibrate`; `stages` picks which run, so U2S and vocoder can train in two processes):
    prepare   units of every group's neutral rendering (given SpeechTokenizer), mels, F0, DTW timing
    judge     (when `w_content > 0`) a CTC phone recogniser on ground-truth mels (`emova.train.u2s_content`)
    u2s       U2S + style encoder: mel L1 + duration + F0 shape / voicing + prosody head + style labels
              (+ the judge's CTC loss on the predicted mels, `w_content`; + an adversarial mel loss against
              a patch discriminator, `w_adv` / `w_fm`, `emova.train.u2s_adversarial`)
    finetune  (when `finetune` is configured) the u2s result, trained on the renderings of chosen voices
              only: every voice teaches the content, the clearest ones are what it learns to speak
    refiner   (when `refiner` is configured) a flow-matching mel refiner on the frozen U2S's teacher-forced mels
              (`emova.train.u2s_refiner`); export puts it between the U2S and the vocoder
    vocoder   Vocos vocoder on ground-truth mels: multi-resolution STFT + mel L1
    export    style prototypes (mean style vector per condition string), F0-shape and prosody calibration
              (open loop on the predictions, then closed loop on the rendered audio), save

Runs on accelerate (bf16 autocast on CPU), writes safetensors checkpoints, logs CSV + PNG.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from emova.speech.style_encoder import StyleEncoder, StyleEncoderConfig
from emova.speech.u2s import U2SConfig, U2SModel
from emova.speech.vocoder import build_vocoder
from emova.train.accel import fresh_accelerator, optimizer_step
from emova.train.checkpoint import latest_checkpoint, load_checkpoint, load_model_tensors, save_checkpoint
from emova.train.plots import plot_log
from emova.train.u2s_adversarial import (
    MelDiscriminator,
    crop_windows,
    discriminator_step,
    generator_losses,
    load_or_new_discriminator,
)
from emova.train.u2s_augment import augment_cache
from emova.train.u2s_calibrate import (
    build_prototypes,
    calibrate_condition_prosody,
    calibrate_mel_gv,
    calibrate_prosody,
    calibrate_rendered_prosody,
    calibrate_shape_gain,
)
from emova.train.u2s_config import U2STrainConfig
from emova.train.u2s_content import ctc_phone_loss, item_phones, load_judge, phone_batch
from emova.train.u2s_cross_voice import cross_voice_cache
from emova.train.u2s_data import U2SData, perturb_units, prepare_cache

STAGES = ("prepare", "judge", "u2s", "finetune", "refiner", "vocoder", "vocoder_gta", "export")


class U2SBundle(nn.Module):
    """What the u2s stage trains: the U2S model and the style encoder."""

    def __init__(self, u2s: U2SConfig, style: StyleEncoderConfig) -> None:
        super().__init__()
        self.u2s = U2SModel(u2s)
        self.style_encoder = StyleEncoder(style)


@torch.no_grad()
def teacher_forced_mels(bundle: U2SBundle, data: U2SData, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mel (F, n_mels), style (S,)) of cached items decoded teacher-forced — their own durations, F0 and
    reference style — so each mel lines up frame by frame with the item's real one (GTA vocoder, refiner)."""
    b = data.collate(ids, random.Random(0), 0.0)
    style = bundle.style_encoder(b["ref"], b["ref_lens"])
    o = bundle.u2s(b["units"], b["n_units"], style, b["durs"], b["lf0"], b["vuv"])
    return [(o["mel"][k, : len(data.mel[i])].float(), style[k].float()) for k, i in enumerate(ids)]


def _lr(step: int, elapsed: float, peak: float, warmup: int, max_steps: int, minutes: float | None) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = step / max_steps
    if minutes:
        p = max(p, elapsed / (60 * minutes))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def u2s_losses(bundle: U2SBundle, batch: dict, cfg: U2STrainConfig, judge: nn.Module | None = None,
               disc: MelDiscriminator | None = None, gen: torch.Generator | None = None,
               adversarial: bool = True) -> dict[str, torch.Tensor]:
    """The U2S's losses on one batch (`total` is what is optimised). With a discriminator, windows of the
    predicted and real mel are cut (`gen`) and returned under `windows` (predicted detached) for its own
    step; `adversarial=False` (its warm-up) leaves the GAN terms out of `total`."""
    style = bundle.style_encoder(batch["ref"], batch["ref_lens"])
    Fr = batch["mel"].shape[1]
    o = bundle.u2s(batch["units"], batch["n_units"], style, batch["durs"], batch["lf0"], batch["vuv"])
    fm, um = o["frame_mask"].float(), o["unit_mask"].float()
    # the regulated length equals the true length by construction (durations sum to the frame count)
    pred = o["mel"].float()
    mel = (pred - batch["mel"]).abs().mean(-1)
    wm = fm * torch.where(batch["exact"], 1.0, cfg.w_mel_styled)[:, None]
    losses = {"mel": (mel * wm).sum() / wm.sum().clamp(min=1e-6)}
    dur_t = torch.log1p(batch["durs"])
    losses["dur"] = (((o["log_dur"].float() - dur_t) ** 2) * um).sum() / um.sum()
    w = fm * (0.3 + 0.7 * batch["vuv"])
    losses["f0"] = (((o["f0_shape"].float() - batch["f0_shape"]) ** 2) * w).sum() / w.sum()
    bce = F.binary_cross_entropy_with_logits(o["vuv_logit"].float(), batch["vuv"], reduction="none")
    losses["vuv"] = (bce * fm).sum() / fm.sum()
    losses["prosody"] = F.mse_loss(o["prosody"].float(), batch["stats"])
    losses["labels"] = bundle.style_encoder.label_loss(style.float(), batch["labels"])
    losses["total"] = (losses["mel"] + cfg.w_dur * losses["dur"] + cfg.w_f0 * losses["f0"] + cfg.w_vuv * losses["vuv"]
                       + cfg.w_prosody * losses["prosody"] + cfg.w_labels * losses["labels"])
    if cfg.w_delta > 0:  # the mel's frame-to-frame change: a smeared transition is small where the real one jumps
        dm = wm[:, 1:] * fm[:, :-1]
        d = ((pred[:, 1:] - pred[:, :-1]) - (batch["mel"][:, 1:] - batch["mel"][:, :-1])).abs().mean(-1)
        losses["delta"] = (d * dm).sum() / dm.sum().clamp(min=1e-6)
        losses["total"] = losses["total"] + cfg.w_delta * losses["delta"]
    if judge is not None and cfg.w_content > 0:
        fmask = o["frame_mask"].bool()
        losses["content"] = ctc_phone_loss(judge(o["mel"], fmask), fmask, batch["phones"], batch["phone_lens"])
        losses["total"] = losses["total"] + cfg.w_content * losses["content"]
    if disc is not None:
        cut = crop_windows(o["mel"], batch["mel"], o["frame_mask"].sum(1), disc.cfg.window,
                           disc.cfg.windows_per_item, gen if gen is not None else torch.Generator().manual_seed(0))
        zero = losses["mel"].new_zeros(())
        losses["adv"], losses["fm"] = zero, zero
        if cut is not None:
            fake, real, item = cut
            losses["windows"] = (fake.detach(), real)
            if adversarial:
                w = torch.where(batch["exact"][item], 1.0, cfg.w_mel_styled)
                g = generator_losses(disc, fake, real, w)
                losses["adv"], losses["fm"] = g["adv"], g["fm"]
                losses["total"] = losses["total"] + cfg.w_adv * g["adv"] + cfg.w_fm * g["fm"]
    assert o["mel"].shape[1] == Fr
    return losses


def _open_log(path: Path, header: list[str], fresh: bool):
    new = fresh or not path.exists()
    f = open(path, "w" if new else "a", newline="")
    w = csv.writer(f)
    if new:
        w.writerow(header)
    return f, w


def _keep_last(run: Path, keep: int = 2) -> None:
    for old in sorted(run.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _grow_into(bundle: U2SBundle, u2s_state: dict, style_state: dict, source: str) -> list[str]:
    """Load weights into `bundle` whose architecture matches the source's or extends it without changing
    what it computes: extra decoder blocks (appended; their output projection is zeroed so each starts as
    the identity), the zero-initialised frame-position input and the unit reader (its projection is
    zero-initialised; `_load_reader` fills the reader itself). Every source weight must exist here with the
    same shape. Returns the names of the new tensors."""
    added: list[str] = []
    for name, mine, theirs in (("u2s", bundle.u2s, u2s_state), ("style encoder", bundle.style_encoder, style_state)):
        a = mine.state_dict()
        missing = [k for k in theirs if k not in a or a[k].shape != theirs[k].shape]
        if missing:
            raise ValueError(f"{source}: its {name} does not match this config's architecture "
                             f"({len(missing)} weights differ, e.g. {missing[0]})")
        new = [k for k in a if k not in theirs]
        n_src_blocks = len({k.split(".")[1] for k in theirs if k.startswith("decoder.")}) if name == "u2s" else 0
        bad = [k for k in new if name != "u2s" or not (
            k.startswith(("frame_pos.", "encoder.reader.", "encoder.reader_proj."))
            or (k.startswith("decoder.") and int(k.split(".")[1]) >= n_src_blocks))]
        if bad:
            raise ValueError(f"{source}: this config's {name} has weights the source lacks that would change its "
                             f"output ({bad[0]}, ...); only extra decoder blocks, frame_position and the unit "
                             "reader may be added")
        mine.load_state_dict({k: v.float() for k, v in theirs.items()}, strict=False)
        if name == "u2s":
            for blk in list(mine.decoder)[n_src_blocks:]:
                nn.init.zeros_(blk.pw2.weight)
                nn.init.zeros_(blk.pw2.bias)
        added += [f"{name}.{k}" for k in new]
    return added


def _init_from_detokenizer(bundle: U2SBundle, spec: str) -> list[str]:
    """Start from a saved detokenizer's U2S and style encoder (same or grown architecture, `_grow_into`)."""
    from emova.speech.detokenizer import SpeechDetokenizer

    src = SpeechDetokenizer.from_pretrained(spec)
    added = _grow_into(bundle, src.u2s.state_dict(), src.style_encoder.state_dict(), f"init_from {spec}")
    print(f"u2s starts from {spec}" + (f" (+{len(added)} new tensors, identity-initialised)" if added else ""))
    return added


def _init_from_checkpoint(bundle: U2SBundle, ck: Path, run_name: str) -> list[str]:
    added = _grow_into(bundle, load_model_tensors(ck, "u2s."), load_model_tensors(ck, "style_encoder."),
                       f"checkpoint {ck}")
    print(f"{run_name} starts from {ck}" + (f" (+{len(added)} new tensors, identity-initialised)" if added else ""))
    return added


def _load_reader(bundle: U2SBundle, tokenizer: str) -> None:
    """Copy the frozen unit reader (`U2SConfig.reader_dim`) from the S2U whose units the U2S is trained on."""
    from emova.speech.tokenizer import SpeechTokenizer

    bundle.u2s.encoder.reader.load_s2u(SpeechTokenizer.from_pretrained(tokenizer).model)
    print(f"u2s unit reader copied from the S2U at {tokenizer} (frozen)")


def _save_u2s(path: Path, bundle: U2SBundle, opt, disc: MelDiscriminator | None, d_opt, state: dict) -> None:
    """The U2S checkpoint; with a discriminator, the discriminator's own checkpoint inside it (`disc/`).
    A kill between the two leaves a U2S checkpoint without `disc/`: it resumes with a fresh discriminator."""
    save_checkpoint(path, bundle, opt, state)
    if disc is not None:
        save_checkpoint(path / "disc", disc, d_opt, {"step": state["step"]})


def train_u2s_model(cfg: U2STrainConfig, progress: bool = True, run_name: str = "u2s",
                    init_checkpoint: Path | None = None) -> Path:
    torch.manual_seed(cfg.seed)
    run = Path(cfg.out_dir) / run_name
    run.mkdir(parents=True, exist_ok=True)
    bundle = U2SBundle(cfg.u2s_config(), StyleEncoderConfig.from_dict(cfg.style_encoder))
    opt = torch.optim.AdamW(bundle.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, epoch, bi0, elapsed0 = 0, 0, 0, 0.0
    ck = latest_checkpoint(run)
    if ck is not None:
        meta = load_checkpoint(ck, bundle, opt)
        step, epoch, bi0, elapsed0 = meta["step"], meta["epoch"], meta["batch_in_epoch"], meta.get("elapsed", 0.0)
        print(f"resuming u2s from {ck} (step {step})")
    added: list[str] | None = None  # None: a fresh model
    if ck is None and init_checkpoint is not None:
        added = _init_from_checkpoint(bundle, init_checkpoint, run_name)
    elif ck is None and cfg.init_from:
        added = _init_from_detokenizer(bundle, cfg.init_from)
    if ck is None and bundle.u2s.cfg.reader_dim and (added is None or any(".encoder.reader." in a for a in added)):
        _load_reader(bundle, cfg.tokenizer)
    disc, d_opt = None, None
    if cfg.uses_disc():  # its own checkpoint inside the U2S's (`step-N/disc`); a fresh one otherwise
        disc, d_opt = load_or_new_discriminator(cfg.disc_config(), cfg.disc_lr, ck / "disc" if ck else None)
    acc = fresh_accelerator(cfg.bf16)
    bundle, opt = acc.prepare(bundle, opt)
    data = U2SData(cfg.cache_dir, cfg.voices, cfg.augment_tags() + cfg.cross_voice_tags())
    judge, phones = None, None
    if cfg.w_content > 0:
        judge, phones = load_judge(cfg), item_phones(data, cfg.corpus)
    cols = (("total", "mel", "dur", "f0", "vuv", "prosody", "labels") + (("delta",) if cfg.w_delta > 0 else ())
            + (("content",) if judge is not None else ())
            + (("adv", "fm", "disc") if disc is not None else ()))
    logf, writer = _open_log(run / "log.csv", ["step", "epoch", "lr", *cols, "elapsed_s"], step == 0)
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {run_name}", unit="step", disable=not progress)
    t0 = time.time() - elapsed0
    bundle.train()

    def out_of_time() -> bool:
        return bool(cfg.max_minutes) and time.time() - t0 > 60 * cfg.max_minutes

    while step < cfg.max_steps and not out_of_time():
        batches = data.batches(epoch, cfg.seed, cfg.batch_frames)
        for bi in range(bi0, len(batches)):
            if step >= cfg.max_steps or out_of_time():
                break
            batch = data.collate(batches[bi], random.Random(cfg.seed * 7919 + step), cfg.other_ref_p)
            if judge is not None:
                batch["phones"], batch["phone_lens"] = phone_batch(phones, batches[bi])
            if cfg.unit_noise > 0:
                batch["units"] = perturb_units(batch["units"], batch["n_units"], cfg.unit_noise, cfg.unit_noise_levels,
                                               torch.Generator().manual_seed(cfg.seed * 7919 + step))
            lr = _lr(step, time.time() - t0, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.max_minutes)
            with acc.autocast():
                losses = u2s_losses(acc.unwrap_model(bundle), batch, cfg, judge, disc,
                                    torch.Generator().manual_seed(cfg.seed * 7919 + step + 1),
                                    adversarial=step >= cfg.adv_warmup)
            optimizer_step(acc, opt, bundle.parameters(), losses["total"], lr)
            if disc is not None:
                losses["disc"] = (discriminator_step(disc, d_opt, losses["windows"], acc.autocast)
                                  if "windows" in losses else losses["mel"].new_zeros(()))
            step += 1
            bar.update()
            if step % cfg.log_every == 0:
                writer.writerow([step, epoch, f"{lr:.3e}"] + [f"{losses[k].item():.4f}" for k in cols]
                                + [f"{time.time() - t0:.1f}"])
                logf.flush()
                bar.set_postfix(mel=f"{losses['mel'].item():.3f}", dur=f"{losses['dur'].item():.3f}")
            if step % cfg.save_every == 0:
                _save_u2s(run / f"step-{step}", acc.unwrap_model(bundle), opt, disc, d_opt,
                          {"step": step, "epoch": epoch, "batch_in_epoch": bi + 1, "elapsed": time.time() - t0})
                _keep_last(run)
        else:
            epoch, bi0 = epoch + 1, 0
            continue
        break
    bar.close()
    logf.close()
    _save_u2s(run / f"step-{step}", acc.unwrap_model(bundle), opt, disc, d_opt,
              {"step": step, "epoch": epoch, "batch_in_epoch": 0, "elapsed": time.time() - t0})
    _keep_last(run)
    plot_log(run / "log.csv", cols[1:])
    return run


def _u2s_stage_checkpoint(cfg: U2STrainConfig, required: bool = True) -> Path | None:
    """The last checkpoint of the U2S that later stages use (the finetune's when there is one); None, when
    not `required`, if that stage has not run."""
    stage = "u2s_finetune" if cfg.finetune else "u2s"
    ck = latest_checkpoint(Path(cfg.out_dir) / stage)
    if ck is None and required:
        raise ValueError(f"no U2S checkpoint under {cfg.out_dir}/{stage}; train the {stage.replace('u2s_', '')} "
                         f"stage first")
    return ck


def export_detokenizer(cfg: U2STrainConfig, out: str | Path | None = None, vocoder_kind: str | None = None):
    from emova.speech.detokenizer import SpeechDetokenizer

    out = out or cfg.export_dir
    if out is None:
        raise ValueError("no export directory given")
    bundle = U2SBundle(cfg.exported_u2s_config(), StyleEncoderConfig.from_dict(cfg.style_encoder))
    ck = _u2s_stage_checkpoint(cfg)
    load_checkpoint(ck, bundle)
    bundle.eval()
    data = U2SData(cfg.cache_dir, cfg.speaking_voices(), cfg.augment_tags())
    bundle.u2s.cfg.shape_gain = calibrate_shape_gain(bundle, data)
    protos = build_prototypes(bundle.style_encoder, data, cfg.prototypes_per_style)
    for k, v in calibrate_prosody(bundle, data, protos).items():
        setattr(bundle.u2s.cfg, k, v)
    kind = vocoder_kind or cfg.export_vocoder
    vcfg = cfg.vocoder_config(kind)
    voc = build_vocoder(vcfg)
    vocoder_from = None
    if kind != "griffin_lim":  # the GTA-finetuned vocoder when that stage ran
        from emova.train.u2s_vocoder import _load_vocoder_weights

        vocoder_from = _load_vocoder_weights(cfg, voc, ("vocoder_gta", "vocoder"))
    if cfg.mel_gv and cfg.refiner is None:  # before the closed loop (which measures the renderer as it runs);
        # a refiner replaces the post-filter
        for k, v in calibrate_mel_gv(bundle.u2s, data, protos).items():
            setattr(bundle.u2s.cfg, k, v)
    refiner, refiner_from = None, None
    if cfg.refiner is not None:
        from emova.train.u2s_refiner import load_trained_refiner

        refiner, refiner_from = load_trained_refiner(cfg, ck)
    detok = SpeechDetokenizer(bundle.u2s, bundle.style_encoder, voc, protos, refiner=refiner)
    for k, v in calibrate_rendered_prosody(detok, data).items():
        setattr(bundle.u2s.cfg, k, v)
    if cfg.condition_prosody:
        protos.prosody = calibrate_condition_prosody(detok, data, pitch_factors=cfg.pitch_factors)
    detok.emotion_strength = cfg.emotion_strength
    info = {"u2s_checkpoint": str(ck), "vocoder_checkpoint": vocoder_from, "refiner_checkpoint": refiner_from,
            "trained_on": cfg.corpus, "tokenizer": cfg.tokenizer, "speaking_voices": cfg.speaking_voices()}
    return detok, detok.save_pretrained(out, info=info)


def train_u2s(cfg: U2STrainConfig, stages: tuple[str, ...] = STAGES, progress: bool = True) -> Path:
    """Run the chosen stages in order; every stage resumes where a killed run stopped."""
    bad = set(stages) - set(STAGES)
    if bad:
        raise ValueError(f"unknown stages {sorted(bad)}; expected some of {', '.join(STAGES)}")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    if "prepare" in stages:
        prepare_cache(cfg.corpus, cfg.cache_dir, cfg.tokenizer, cfg.vocoder_config(), tuple(cfg.splits),
                      cfg.max_groups, workers=cfg.workers, progress=progress, voices=cfg.prepare_voices)
        for aug in cfg.augmentations():
            augment_cache(cfg.cache_dir, cfg.corpus, aug, cfg.vocoder_config(), workers=cfg.workers, progress=progress)
        for cv in cfg.cross_voices():
            cross_voice_cache(cfg.cache_dir, cfg.corpus, cv, cfg.vocoder_config(), cfg.tokenizer,
                              voices=cfg.voices, workers=cfg.workers, progress=progress)
    if "judge" in stages and cfg.uses_judge():
        from emova.train.u2s_content import train_phone_judge

        train_phone_judge(cfg, progress)
    if "u2s" in stages:
        train_u2s_model(cfg, progress)
    if "finetune" in stages and cfg.finetune:
        base = latest_checkpoint(out / "u2s")
        if base is None and latest_checkpoint(out / "u2s_finetune") is None:
            raise ValueError(f"the finetune stage starts from the u2s stage: no checkpoint under {out / 'u2s'}")
        train_u2s_model(cfg.finetune_config(), progress, "u2s_finetune", base)
    if "refiner" in stages and cfg.refiner is not None:
        from emova.train.u2s_refiner import train_refiner

        train_refiner(cfg, progress)
    if "vocoder" in stages or "vocoder_gta" in stages:
        from emova.train.u2s_vocoder import train_vocoder, train_vocoder_gta
    if "vocoder" in stages:
        train_vocoder(cfg, progress)
    if "vocoder_gta" in stages and cfg.gta_steps > 0:
        train_vocoder_gta(cfg, progress)
    if "export" in stages:
        _, d = export_detokenizer(cfg)
        print("exported", d)
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m emova.train.u2s` (what `emova train u2s` runs)."""
    import argparse

    p = argparse.ArgumentParser(prog="emova train u2s", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "u2s_tiny.yaml"))
    p.add_argument("--corpus", default=None)
    p.add_argument("--tokenizer", default=None, help="bundled name, tokenizer directory or S2U run directory")
    p.add_argument("--out", dest="out_dir", default=None)
    p.add_argument("--export", dest="export_dir", default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--vocoder-minutes", type=float, default=None)
    p.add_argument("--gta-minutes", type=float, default=None, help="wall-clock budget of the vocoder_gta stage")
    p.add_argument("--export-vocoder", default=None, choices=["vocos", "griffin_lim", "hifigan"])
    p.add_argument("--cache", dest="cache_dir", default=None)
    p.add_argument("--voices", nargs="+", default=None, help="glob patterns of the voices the U2S learns to speak")
    p.add_argument("--init-from", default=None, help="detokenizer (dir or bundled name) to start the u2s stage from")
    p.add_argument("--finetune-minutes", type=float, default=None, help="wall-clock budget of the finetune stage")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    a = p.parse_args(argv)
    cfg = U2STrainConfig.load(a.config, corpus=a.corpus, tokenizer=a.tokenizer, out_dir=a.out_dir,
                              export_dir=a.export_dir, max_minutes=a.max_minutes, vocoder_minutes=a.vocoder_minutes,
                              export_vocoder=a.export_vocoder, cache_dir=a.cache_dir, voices=a.voices,
                              init_from=a.init_from, gta_minutes=a.gta_minutes)
    if a.finetune_minutes is not None:
        if not cfg.finetune:
            raise SystemExit("--finetune-minutes: this config has no `finetune` section")
        cfg = U2STrainConfig(**{**cfg.__dict__, "finetune": {**cfg.finetune, "max_minutes": a.finetune_minutes}})
    train_u2s(cfg, tuple(s for s in a.stages.split(",") if s))


if __name__ == "__main__":  # pragma: no cover
    main()
