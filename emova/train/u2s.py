"""Training the tiny U2S detokenizer: cache → U2S + style encoder → vocoder → prototypes → export.

Stages (each resumable; `stages` picks which run, so U2S and vocoder can train in two processes):
    prepare   units of every group's neutral rendering (given SpeechTokenizer), mels, F0, DTW timing
    u2s       U2S + style encoder: mel L1 + duration + F0 shape / voicing + prosody head + style labels
    finetune  (when `finetune` is configured) the u2s result, trained on the renderings of chosen voices
              only: every voice teaches the content, the clearest ones are what it learns to speak
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from emova.audio import Audio
from emova.data.speech.corpus import read_manifest
from emova.data.speech.voices import PITCH_FACTOR
from emova.speech.style_encoder import StyleEncoder, StyleEncoderConfig, StylePrototypes
from emova.speech.u2s import U2SConfig, U2SModel
from emova.speech.vocoder import VocoderConfig, build_vocoder, mel_frames, mel_l1, multi_resolution_stft_loss
from emova.styles import Style
from emova.train.accel import fresh_accelerator
from emova.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from emova.train.plots import plot_log
from emova.train.u2s_data import U2SData, prepare_cache

STAGES = ("prepare", "u2s", "finetune", "vocoder", "vocoder_gta", "export")
FINETUNE_KEYS = {"voices", "max_minutes", "max_steps", "lr", "warmup_steps", "model"}


@dataclass
class U2STrainConfig:
    corpus: str = "data_cache/speech"
    tokenizer: str = "emova-tiny"
    cache_dir: str = "data_cache/u2s"
    out_dir: str = "runs/u2s"
    export_dir: str | None = "emova/assets/emova-tiny/speech_detokenizer"
    splits: list[str] = field(default_factory=lambda: ["train"])
    max_groups: int | None = None
    # glob patterns on corpus voice keys: only these voices' groups are cached (None: every voice). A run
    # that trains only on some voices (voices / init_from) need not encode the others.
    prepare_voices: list[str] | None = None
    workers: int = 2
    # glob patterns on corpus voice keys: the renderings the U2S learns to *speak* (targets, prototypes);
    # None = every training voice. Units always come from whatever the tokenizer hears.
    voices: list[str] | None = None
    init_from: str | None = None  # a detokenizer (dir or bundled name) whose U2S + style encoder start the run
    # second phase (stage `finetune`), e.g. {voices: ["flite:*"], max_minutes: 60, lr: 5e-4, warmup_steps: 50}:
    # starts from the u2s stage's last checkpoint; export then takes its weights and its voices' prototypes.
    # `model:` overrides there may grow the U2S (more decoder blocks, frame_position), identity-initialised.
    finetune: dict | None = None
    model: dict = field(default_factory=dict)  # U2SConfig overrides
    style_encoder: dict = field(default_factory=dict)
    vocoder: dict = field(default_factory=dict)
    export_vocoder: str = "vocos"  # vocos | griffin_lim (pick by `emova eval u2s`)
    # U2S optimisation
    max_steps: int = 6000
    max_minutes: float | None = None  # wall-clock budget per stage (also shapes the LR schedule)
    batch_frames: int = 4000
    lr: float = 1e-3
    warmup_steps: int = 200
    other_ref_p: float = 0.25
    w_dur: float = 1.0
    w_f0: float = 1.0
    w_vuv: float = 0.5
    w_prosody: float = 1.0
    w_labels: float = 0.2
    # weight of the mel loss on renderings timed by DTW against the neutral one (other styles); the neutral
    # rendering's own timing is exact. Below 1, misaligned frames teach the decoder less blur.
    w_mel_styled: float = 1.0
    # vocoder optimisation
    vocoder_steps: int = 6000
    vocoder_minutes: float | None = None
    vocoder_batch: int = 16
    vocoder_segment: int = 12_800  # samples
    vocoder_lr: float = 1e-3
    vocoder_items: int = 6000
    # vocoder_gta stage (runs when gta_steps > 0): steps / minutes, learning rate, share of each batch cut from
    # U2S (teacher-forced) mels
    gta_steps: int = 0
    gta_minutes: float | None = None
    gta_lr: float = 2e-4
    gta_fraction: float = 0.5
    # common
    threads: int = 1
    bf16: bool = True
    seed: int = 0
    save_every: int = 500
    log_every: int = 20
    prototypes_per_style: int = 40
    # export: store per-condition F0 level / duration / F0 excursion / loudness corrections with the prototypes
    # (calibrate_condition_prosody). Off: on the bundled U2S it did not help reliably (docs/u2s.md).
    condition_prosody: bool = False
    # export: fit the global-variance mel post-filter (calibrate_mel_gv)
    mel_gv: bool = False
    # the F0 ratio of each pitch label to normal that the corpus was rendered with (emova.data.speech.voices);
    # the condition table keeps the labels this far apart. None: follow the renderings as they came out.
    pitch_factors: dict[str, float] | None = field(default_factory=lambda: dict(PITCH_FACTOR))

    def __post_init__(self) -> None:
        for k in ("max_steps", "batch_frames", "vocoder_steps", "vocoder_batch", "vocoder_segment", "threads"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"U2STrainConfig.{k} must be >= 1")
        if self.voices is not None and (not isinstance(self.voices, list) or not self.voices
                                        or not all(isinstance(v, str) and v for v in self.voices)):
            raise ValueError(f"U2STrainConfig.voices must be a non-empty list of glob patterns, got {self.voices!r}")
        if self.prepare_voices is not None and (not isinstance(self.prepare_voices, list) or not self.prepare_voices
                                                or not all(isinstance(v, str) and v for v in self.prepare_voices)):
            raise ValueError("U2STrainConfig.prepare_voices must be a non-empty list of glob patterns, "
                             f"got {self.prepare_voices!r}")
        if self.finetune is not None:
            if not isinstance(self.finetune, dict) or set(self.finetune) - FINETUNE_KEYS:
                raise ValueError(f"U2STrainConfig.finetune must be a mapping with keys among {sorted(FINETUNE_KEYS)}, "
                                 f"got {self.finetune!r}")
            self.finetune_config()
        if self.pitch_factors is not None and (
                not isinstance(self.pitch_factors, dict) or set(self.pitch_factors) != {"low", "normal", "high"}
                or not all(isinstance(v, (int, float)) and v > 0 for v in self.pitch_factors.values())):
            raise ValueError("U2STrainConfig.pitch_factors must map low, normal and high to positive numbers, "
                             f"got {self.pitch_factors!r}")
        if not isinstance(self.gta_steps, int) or self.gta_steps < 0:
            raise ValueError(f"U2STrainConfig.gta_steps must be an integer >= 0 (0: no vocoder_gta stage), "
                             f"got {self.gta_steps!r}")
        if not isinstance(self.w_mel_styled, (int, float)) or not 0.0 <= self.w_mel_styled <= 10.0:
            raise ValueError(f"U2STrainConfig.w_mel_styled must be a number in [0, 10], got {self.w_mel_styled!r}")
        if not 0.0 <= self.gta_fraction <= 1.0:
            raise ValueError(f"U2STrainConfig.gta_fraction must be in [0, 1], got {self.gta_fraction!r}")
        if self.export_vocoder not in ("vocos", "griffin_lim", "hifigan"):
            raise ValueError(f"export_vocoder must be vocos, hifigan or griffin_lim, got {self.export_vocoder!r}")
        self.u2s_config()
        self.vocoder_config()
        StyleEncoderConfig.from_dict(self.style_encoder)

    @classmethod
    def load(cls, path: str | Path, **overrides) -> U2STrainConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        data.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(f.name for f in fields(cls))}")
        return cls(**data)

    def finetune_config(self) -> U2STrainConfig:
        """The config the finetune stage trains with (this one, with the finetune overrides)."""
        from dataclasses import replace

        ft = dict(self.finetune or {})
        if "model" in ft:  # the finetune may grow the architecture (identity-initialised blocks, `_grow_into`)
            ft["model"] = {**self.model, **ft["model"]}
        return replace(self, **{**ft, "finetune": None, "init_from": None})

    def speaking_voices(self) -> list[str] | None:
        """The voices the exported detokenizer speaks (prototypes, calibration)."""
        return self.finetune.get("voices", self.voices) if self.finetune else self.voices

    def u2s_config(self) -> U2SConfig:
        return U2SConfig.from_dict(self.model)

    def exported_u2s_config(self) -> U2SConfig:
        """The architecture of the U2S that export (and vocoder_gta) load: the finetune's when there is one."""
        return self.finetune_config().u2s_config() if self.finetune else self.u2s_config()

    def vocoder_config(self, kind: str | None = None) -> VocoderConfig:
        u = self.u2s_config()
        d = {"sample_rate": u.sample_rate, "n_fft": u.n_fft, "hop": u.hop, "win": u.win, "n_mels": u.n_mels,
             **self.vocoder}
        if kind:
            d["kind"] = kind
        return VocoderConfig.from_dict(d)


class U2SBundle(nn.Module):
    """What the u2s stage trains: the U2S model and the style encoder."""

    def __init__(self, u2s: U2SConfig, style: StyleEncoderConfig) -> None:
        super().__init__()
        self.u2s = U2SModel(u2s)
        self.style_encoder = StyleEncoder(style)


def _lr(step: int, elapsed: float, peak: float, warmup: int, max_steps: int, minutes: float | None) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = step / max_steps
    if minutes:
        p = max(p, elapsed / (60 * minutes))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def u2s_losses(bundle: U2SBundle, batch: dict, cfg: U2STrainConfig) -> dict[str, torch.Tensor]:
    style = bundle.style_encoder(batch["ref"], batch["ref_lens"])
    Fr = batch["mel"].shape[1]
    o = bundle.u2s(batch["units"], batch["n_units"], style, batch["durs"], batch["lf0"], batch["vuv"])
    fm, um = o["frame_mask"].float(), o["unit_mask"].float()
    # the regulated length equals the true length by construction (durations sum to the frame count)
    mel = (o["mel"].float() - batch["mel"]).abs().mean(-1)
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
    the identity) and the zero-initialised frame-position input. Every source weight must exist here with
    the same shape. Returns the names of the new tensors."""
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
            k.startswith("frame_pos.") or (k.startswith("decoder.") and int(k.split(".")[1]) >= n_src_blocks))]
        if bad:
            raise ValueError(f"{source}: this config's {name} has weights the source lacks that would change its "
                             f"output ({bad[0]}, ...); only extra decoder blocks and frame_position may be added")
        mine.load_state_dict({k: v.float() for k, v in theirs.items()}, strict=False)
        if name == "u2s":
            for blk in list(mine.decoder)[n_src_blocks:]:
                nn.init.zeros_(blk.pw2.weight)
                nn.init.zeros_(blk.pw2.bias)
        added += [f"{name}.{k}" for k in new]
    return added


def _init_from_detokenizer(bundle: U2SBundle, spec: str) -> None:
    """Start from a saved detokenizer's U2S and style encoder (same or grown architecture, `_grow_into`)."""
    from emova.speech.detokenizer import SpeechDetokenizer

    src = SpeechDetokenizer.from_pretrained(spec)
    added = _grow_into(bundle, src.u2s.state_dict(), src.style_encoder.state_dict(), f"init_from {spec}")
    print(f"u2s starts from {spec}" + (f" (+{len(added)} new tensors, identity-initialised)" if added else ""))


def _init_from_checkpoint(bundle: U2SBundle, ck: Path, run_name: str) -> None:
    from safetensors.torch import load_file

    state = load_file(str(Path(ck) / "model.safetensors"))
    parts = {p: {k[len(p):]: v for k, v in state.items() if k.startswith(p)} for p in ("u2s.", "style_encoder.")}
    added = _grow_into(bundle, parts["u2s."], parts["style_encoder."], f"checkpoint {ck}")
    print(f"{run_name} starts from {ck}" + (f" (+{len(added)} new tensors, identity-initialised)" if added else ""))


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
    elif init_checkpoint is not None:
        _init_from_checkpoint(bundle, init_checkpoint, run_name)
    elif cfg.init_from:
        _init_from_detokenizer(bundle, cfg.init_from)
    acc = fresh_accelerator(cfg.bf16)
    bundle, opt = acc.prepare(bundle, opt)
    data = U2SData(cfg.cache_dir, cfg.voices)
    logf, writer = _open_log(run / "log.csv", ["step", "epoch", "lr", "total", "mel", "dur", "f0", "vuv", "prosody",
                                               "labels", "elapsed_s"], step == 0)
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
            lr = _lr(step, time.time() - t0, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.max_minutes)
            for g in opt.param_groups:
                g["lr"] = lr
            with acc.autocast():
                losses = u2s_losses(acc.unwrap_model(bundle), batch, cfg)
            opt.zero_grad(set_to_none=True)
            acc.backward(losses["total"])
            torch.nn.utils.clip_grad_norm_(bundle.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update()
            if step % cfg.log_every == 0:
                writer.writerow([step, epoch, f"{lr:.3e}"] + [f"{losses[k].item():.4f}" for k in
                                 ("total", "mel", "dur", "f0", "vuv", "prosody", "labels")] + [f"{time.time() - t0:.1f}"])
                logf.flush()
                bar.set_postfix(mel=f"{losses['mel'].item():.3f}", dur=f"{losses['dur'].item():.3f}")
            if step % cfg.save_every == 0:
                save_checkpoint(run / f"step-{step}", acc.unwrap_model(bundle), opt,
                                {"step": step, "epoch": epoch, "batch_in_epoch": bi + 1, "elapsed": time.time() - t0})
                _keep_last(run)
        else:
            epoch, bi0 = epoch + 1, 0
            continue
        break
    bar.close()
    logf.close()
    save_checkpoint(run / f"step-{step}", acc.unwrap_model(bundle), opt,
                    {"step": step, "epoch": epoch, "batch_in_epoch": 0, "elapsed": time.time() - t0})
    _keep_last(run)
    plot_log(run / "log.csv", ("mel", "dur", "f0", "vuv", "prosody", "labels"))
    return run


def _vocoder_waves(cfg: U2STrainConfig) -> list[np.ndarray]:
    rows = read_manifest(cfg.corpus, tuple(cfg.splits))
    rng = random.Random(cfg.seed)
    rng.shuffle(rows)
    sr = cfg.vocoder_config().sample_rate
    return [Audio.load(Path(cfg.corpus) / r["path"], sr).samples for r in rows[: cfg.vocoder_items]]


def _resume_vocoder(run: Path, model: nn.Module, lr: float, name: str) -> tuple[torch.optim.Optimizer, int, float]:
    """The vocoder optimiser, and the step / elapsed seconds of the run's latest checkpoint (loaded) or 0."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.8, 0.99))
    ck = latest_checkpoint(run)
    if ck is None:
        return opt, 0, 0.0
    meta = load_checkpoint(ck, model, opt)
    print(f"resuming {name} from {ck} (step {meta['step']})")
    return opt, meta["step"], meta.get("elapsed", 0.0)


def train_vocoder(cfg: U2STrainConfig, progress: bool = True) -> Path:
    torch.manual_seed(cfg.seed + 1)
    vcfg = cfg.vocoder_config()
    run = Path(cfg.out_dir) / "vocoder"
    run.mkdir(parents=True, exist_ok=True)
    model = build_vocoder(vcfg)
    opt, step, elapsed0 = _resume_vocoder(run, model, cfg.vocoder_lr, "vocoder")
    acc = fresh_accelerator(cfg.bf16)
    model, opt = acc.prepare(model, opt)
    waves = [w for w in _vocoder_waves(cfg) if len(w) > cfg.vocoder_segment]
    if not waves:
        raise ValueError("no corpus utterances longer than vocoder_segment")
    seg = cfg.vocoder_segment // vcfg.hop * vcfg.hop
    logf, writer = _open_log(run / "log.csv", ["step", "lr", "total", "stft", "mel", "elapsed_s"], step == 0)
    bar = tqdm(total=cfg.vocoder_steps, initial=step, desc="train vocoder", unit="step", disable=not progress)
    t0 = time.time() - elapsed0
    model.train()
    while step < cfg.vocoder_steps and not (cfg.vocoder_minutes and time.time() - t0 > 60 * cfg.vocoder_minutes):
        rng = random.Random(cfg.seed * 104729 + step)
        segs = []
        for _ in range(cfg.vocoder_batch):
            w = waves[rng.randrange(len(waves))]
            o = rng.randrange(0, len(w) - seg)
            segs.append(torch.from_numpy(w[o : o + seg]))
        x = torch.stack(segs)  # (B, seg)
        mel = mel_frames(x, vcfg)  # (B, seg / hop + 1, n_mels)
        lr = _lr(step, time.time() - t0, cfg.vocoder_lr, 200, cfg.vocoder_steps, cfg.vocoder_minutes)
        step += 1
        _vocoder_step(cfg, acc, model, opt, mel, x, seg, vcfg, lr, step, run, writer, logf, bar, t0)
    return _finish_vocoder_run(acc, model, opt, step, run, logf, bar, t0)


def _vocoder_step(cfg: U2STrainConfig, acc, model: nn.Module, opt, mel: torch.Tensor, x: torch.Tensor, seg: int,
                  vcfg: VocoderConfig, lr: float, step: int, run: Path, writer, logf, bar, t0: float) -> None:
    """One vocoder update (multi-resolution STFT + mel L1 against the waveform `x`), then log / checkpoint."""
    for g in opt.param_groups:
        g["lr"] = lr
    with acc.autocast():
        y = model(mel)
    y = y.float()[:, :seg]
    stft = multi_resolution_stft_loss(y, x[:, : y.shape[1]])
    ml = mel_l1(y, x[:, : y.shape[1]], vcfg)
    loss = stft + ml
    opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    bar.update()
    if step % cfg.log_every == 0:
        writer.writerow([step, f"{lr:.3e}", f"{loss.item():.4f}", f"{stft.item():.4f}", f"{ml.item():.4f}",
                         f"{time.time() - t0:.1f}"])
        logf.flush()
        bar.set_postfix(stft=f"{stft.item():.3f}", mel=f"{ml.item():.3f}")
    if step % cfg.save_every == 0:
        save_checkpoint(run / f"step-{step}", acc.unwrap_model(model), opt, {"step": step, "elapsed": time.time() - t0})
        _keep_last(run)


def _finish_vocoder_run(acc, model: nn.Module, opt, step: int, run: Path, logf, bar, t0: float) -> Path:
    bar.close()
    logf.close()
    save_checkpoint(run / f"step-{step}", acc.unwrap_model(model), opt, {"step": step, "elapsed": time.time() - t0})
    _keep_last(run)
    plot_log(run / "log.csv", ("stft", "mel"))
    return run


def _u2s_stage_checkpoint(cfg: U2STrainConfig) -> Path:
    stage = "u2s_finetune" if cfg.finetune else "u2s"
    ck = latest_checkpoint(Path(cfg.out_dir) / stage)
    if ck is None:
        raise ValueError(f"no U2S checkpoint under {cfg.out_dir}/{stage}; train the {stage.replace('u2s_', '')} "
                         f"stage first")
    return ck


def _load_vocoder_weights(cfg: U2STrainConfig, voc: nn.Module, runs: tuple[str, ...]) -> str:
    """Latest checkpoint of the first run directory that has one, else the `init_from` detokenizer's vocoder."""
    for name in runs:
        vck = latest_checkpoint(Path(cfg.out_dir) / name)
        if vck is not None:
            load_checkpoint(vck, voc)
            return str(vck)
    if cfg.init_from:
        from emova.speech.detokenizer import SpeechDetokenizer

        src = SpeechDetokenizer.from_pretrained(cfg.init_from).vocoder
        a, b = voc.state_dict(), src.state_dict()
        if getattr(src, "cfg", None) != voc.cfg or a.keys() != b.keys():
            raise ValueError(f"init_from {cfg.init_from}: its vocoder is not the configured {voc.cfg.kind} vocoder")
        voc.load_state_dict({k: v.float() for k, v in b.items()})
        return f"{cfg.init_from} (vocoder)"
    raise ValueError(f"no vocoder checkpoint under {cfg.out_dir}/{{{','.join(runs)}}} and no init_from; "
                     f"train the vocoder stage or export griffin_lim")


def train_vocoder_gta(cfg: U2STrainConfig, progress: bool = True) -> Path:
    """Continue the vocoder on ground-truth-aligned (GTA) mels, as Tacotron 2 does for WaveNet.

    The trained U2S decodes each exactly timed (neutral) training rendering teacher-forced (its own
    durations, F0 and reference style), so its mel lines up frame by frame with the real waveform; the
    vocoder learns to map that smoother mel to the real audio. `gta_fraction` of each batch comes from
    such mels, the rest from ground-truth mels of the same waves (it must still render every style)."""
    torch.manual_seed(cfg.seed + 2)
    vcfg = cfg.vocoder_config()
    if vcfg.kind == "griffin_lim":
        raise ValueError("vocoder_gta trains a neural vocoder; griffin_lim has no weights")
    run = Path(cfg.out_dir) / "vocoder_gta"
    run.mkdir(parents=True, exist_ok=True)
    bundle = U2SBundle(cfg.exported_u2s_config(), StyleEncoderConfig.from_dict(cfg.style_encoder))
    load_checkpoint(_u2s_stage_checkpoint(cfg), bundle)
    bundle.eval().requires_grad_(False)
    model = build_vocoder(vcfg)
    opt, step, elapsed0 = _resume_vocoder(run, model, cfg.gta_lr, "vocoder_gta")
    if step == 0:
        print("vocoder_gta starts from", _load_vocoder_weights(cfg, model, ("vocoder",)))
    data = U2SData(cfg.cache_dir, cfg.speaking_voices())
    seg_frames = cfg.vocoder_segment // vcfg.hop
    seg = seg_frames * vcfg.hop
    ids = [i for i in range(len(data)) if data.exact[i] and len(data.mel[i]) > seg_frames + 2]
    if not ids:
        raise ValueError("vocoder_gta: no exactly timed (neutral) cached renderings longer than vocoder_segment")
    paths = {r["id"]: Path(cfg.corpus) / r["path"] for r in read_manifest(cfg.corpus, tuple(cfg.splits))}
    waves: dict[int, np.ndarray] = {}
    gta: dict[int, torch.Tensor] = {}

    def wave(i: int) -> np.ndarray:
        if i not in waves:
            waves[i] = Audio.load(paths[data.meta[i]["id"]], vcfg.sample_rate).samples
        return waves[i]

    def gta_mel(batch_ids: list[int]) -> None:
        todo = [i for i in batch_ids if i not in gta]
        if not todo:
            return
        b = data.collate(todo, random.Random(0), 0.0)
        with torch.no_grad():
            style = bundle.style_encoder(b["ref"], b["ref_lens"])
            o = bundle.u2s(b["units"], b["n_units"], style, b["durs"], b["lf0"], b["vuv"])
        for k, i in enumerate(todo):
            gta[i] = o["mel"][k, : len(data.mel[i])].float()

    acc = fresh_accelerator(cfg.bf16)
    model, opt = acc.prepare(model, opt)
    logf, writer = _open_log(run / "log.csv", ["step", "lr", "total", "stft", "mel", "elapsed_s"], step == 0)
    bar = tqdm(total=cfg.gta_steps, initial=step, desc="train vocoder_gta", unit="step", disable=not progress)
    t0 = time.time() - elapsed0
    model.train()
    n_gta = round(cfg.vocoder_batch * cfg.gta_fraction)
    while step < cfg.gta_steps and not (cfg.gta_minutes and time.time() - t0 > 60 * cfg.gta_minutes):
        rng = random.Random(cfg.seed * 15485863 + step)
        pick = [rng.choice(ids) for _ in range(cfg.vocoder_batch)]
        gta_mel(pick[:n_gta])
        mels, segs = [], []
        for k, i in enumerate(pick):
            w = wave(i)
            last = min(len(data.mel[i]), len(w) // vcfg.hop + 1) - seg_frames - 1
            o = rng.randrange(0, max(1, last))
            x = torch.from_numpy(w[o * vcfg.hop : o * vcfg.hop + seg])
            x = F.pad(x, (0, seg - len(x)))
            segs.append(x)
            mels.append(gta[i][o : o + seg_frames + 1] if k < n_gta else mel_frames(x, vcfg))
        x, mel = torch.stack(segs), torch.stack(mels)
        lr = _lr(step, time.time() - t0, cfg.gta_lr, 50, cfg.gta_steps, cfg.gta_minutes)
        step += 1
        _vocoder_step(cfg, acc, model, opt, mel, x, seg, vcfg, lr, step, run, writer, logf, bar, t0)
    return _finish_vocoder_run(acc, model, opt, step, run, logf, bar, t0)


@torch.no_grad()
def calibrate_shape_gain(bundle: U2SBundle, data: U2SData, n: int = 200) -> float:
    """Ratio of target to predicted F0-shape spread on voiced frames (predictions shrink towards 0)."""
    rng = random.Random(0)
    idx = rng.sample(range(len(data)), min(n, len(data)))
    pred_sd, true_sd = [], []
    for s in range(0, len(idx), 16):
        b = data.collate(idx[s : s + 16], rng, 0.0)
        style = bundle.style_encoder(b["ref"], b["ref_lens"])
        h, umask = bundle.u2s.encode(b["units"], b["n_units"])
        hf, fm = bundle.u2s.regulate(h, b["durs"], b["n_units"], b["mel"].shape[1])
        z = bundle.u2s.pitch(hf, style, fm)[..., 0]
        for k in range(len(b["units"])):
            v = (b["vuv"][k] > 0) & (fm[k, :, 0] > 0)
            if v.sum() > 5:
                pred_sd.append(float(z[k][v].std()))
                true_sd.append(float(b["f0_shape"][k][v].std()))
    if not pred_sd:
        return 1.0
    return float(np.clip(np.median(true_sd) / max(1e-3, np.median(pred_sd)), 1.0, 2.5))


def _wls(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least squares y ~ slope * x + intercept."""
    A = np.stack([x, np.ones_like(x)], 1) * w[:, None]
    slope, icpt = np.linalg.lstsq(A, y * w, rcond=None)[0]
    return float(slope), float(icpt)


@torch.no_grad()
def calibrate_prosody(bundle: U2SBundle, data: U2SData, protos: StylePrototypes, per_style: int = 12) -> dict[str, float]:
    """Undo the regression-to-the-mean of what a style asks for, on the path inference takes.

    For every condition with training items: the data's mean utterance stats (median log-F0, mean
    log(1 + frames) per unit) against the prediction from that condition's *prototype* (the vector a
    style string selects at inference): the prosody head's level, and the duration predictor's mean on
    the same items' units. Fits (least squares, weighted by items) the level map `a + g * level` and a
    duration shift `k * (head log-dur - centre) + b` on the residual. Gains are clipped to sane ranges."""
    rng = random.Random(0)
    rows = []  # (n, data level, data dur, head level, head dur, predicted dur)
    for key, ids in sorted(data.by_style.items()):
        if key not in protos.index:
            continue
        pick = rng.sample(ids, min(per_style, len(ids)))
        style = protos.vector(key)[None].float()
        head = bundle.u2s.prosody(style)[0]
        pred = []
        for i in pick:
            u = torch.from_numpy(data.units[i].astype(np.int64))[None]
            h, m = bundle.u2s.encode(u, torch.tensor([u.shape[1]]))
            pred.append(float(bundle.u2s.predict_log_durations(h, style, m).mean()))
        st = np.array([data.stats[i] for i in pick])
        rows.append((len(pick), st[:, 0].mean(), st[:, 2].mean(), float(head[0]), float(head[2]), float(np.mean(pred))))
    if len(rows) < 3:
        return {}
    r = np.array(rows)
    w = np.sqrt(r[:, 0])
    g, a = _wls(r[:, 3], r[:, 1], w)
    g = float(np.clip(g, 1.0, 3.0))
    a = float(np.average(r[:, 1] - g * r[:, 3], weights=r[:, 0]))
    centre = float(np.average(r[:, 4], weights=r[:, 0]))
    k, b = _wls(r[:, 4] - centre, r[:, 2] - r[:, 5], w)
    k = float(np.clip(k, 0.0, 3.0))
    b = float(np.average(r[:, 2] - r[:, 5] - k * (r[:, 4] - centre), weights=r[:, 0]))
    return {"level_gain": g, "level_bias": a, "rate_gain": k, "rate_center": centre, "rate_bias": b}


@torch.no_grad()
def calibrate_rendered_prosody(detok, data: U2SData, per_style: int = 4, min_items: int = 4) -> dict[str, float]:
    """Closed-loop correction of the prosody calibration, measured on what the detokenizer *outputs*.

    `calibrate_prosody` matches the levels the U2S asks for; the mel decoder then renders F0 with its own
    compression (low voices come out higher, high ones lower), and the duration shift acts per unit in
    log(1 + frames), not on the utterance length. Here, for every condition with at least `min_items`
    training renderings: decode those items' units with the condition's prototype, measure the median
    F0 of the audio (Praat) and the total length, and compare with the renderings themselves.
      * pitch: fit rendered ≈ α + β · requested level across conditions, then the level map whose
        rendered result best matches the data: level_gain, level_bias (gain clipped to [1, 3]);
      * duration: the rate_gain (grid 0–3) and rate_bias whose predicted utterance lengths best match
        the renderings' lengths (log frames, least squares).
    Training renderings only; held-out data never enters."""
    from emova.audio import f0_contour
    from emova.speech.u2s import F0_REF, F0_SCALE

    u2s, cfg = detok.u2s, detok.u2s.cfg
    rng = random.Random(1)
    rows = []  # weight, data level, head level, head log-dur, rendered level, items, predicted log-durations
    for key, ids in sorted(data.by_style.items()):
        if key not in detok.prototypes.index or len(ids) < min_items:
            continue
        pick = rng.sample(ids, min(per_style, len(ids)))
        style = detok.prototypes.vector(key)[None].float()
        head = u2s.prosody(style)[0]
        out, log_durs = [], []
        for i in pick:
            u = torch.from_numpy(data.units[i].astype(np.int64))[None]
            audio = Audio(detok.vocode(u2s.infer(u, style)["mel"]), detok.sample_rate)
            f0 = f0_contour(audio) if audio.duration >= 0.25 else np.zeros(1)  # Praat needs a few periods
            if (f0 > 0).sum() >= 5:
                out.append((math.log(float(np.median(f0[f0 > 0]))) - F0_REF) / F0_SCALE)
            h, m = u2s.encode(u, torch.tensor([u.shape[1]]))
            log_durs.append(u2s.predict_log_durations(h, style, m)[0].numpy())
        rows.append((len(pick), float(np.mean([data.stats[i][0] for i in pick])), float(head[0]), float(head[2]),
                     float(np.mean(out)) if out else math.nan, pick, log_durs))
    if len(rows) < 3:
        return {}
    w = np.sqrt(np.array([r[0] for r in rows], dtype=float))
    d_lvl, h_lvl, h_dur, r_lvl = (np.array([r[k] for r in rows]) for k in (1, 2, 3, 4))
    res: dict[str, float] = {}
    ok = np.isfinite(r_lvl)
    if ok.sum() >= 3:
        req = cfg.level_bias + cfg.level_gain * h_lvl[ok]
        beta, alpha = _wls(req, r_lvl[ok], w[ok])
        if 0.2 <= beta <= 2.0:
            want = (d_lvl[ok] - alpha) / beta  # the requested level that renders as the data's level
            g, _ = _wls(h_lvl[ok], want, w[ok])
            g = float(np.clip(g, 1.0, 3.0))
            res["level_gain"] = g
            res["level_bias"] = float(np.average(want - g * h_lvl[ok], weights=w[ok]))
    # duration: utterance length in frames, predicted vs rendered, over a grid of rate gains
    true_len = np.array([np.mean([math.log(len(data.mel[i])) for i in r[5]]) for r in rows])
    best = (math.inf, cfg.rate_gain, cfg.rate_bias)
    for k in np.arange(0.0, 3.01, 0.1):
        shift = k * (h_dur - cfg.rate_center)
        for b in np.arange(-0.3, 0.301, 0.02):
            pred = np.array([np.mean([math.log(max(1.0, float(np.clip(np.exp(ld + s + b) - 1, 0, None).sum())))
                                      for ld in r[6]]) for r, s in zip(rows, shift)])
            err = float(np.average((pred - true_len) ** 2, weights=w))
            if err < best[0]:
                best = (err, float(k), float(b))
    res["rate_gain"], res["rate_bias"] = best[1], best[2]
    return res


def _solve_rate_offset(log_durs: list[np.ndarray], target_log_len: float, lo: float = -1.0, hi: float = 1.0) -> float:
    """The shift b of every unit's log(1 + frames) whose mean log utterance length matches the target."""
    def mean_log_len(b: float) -> float:
        return float(np.mean([math.log(max(1.0, float(np.clip(np.exp(ld + b) - 1, 0, None).sum()))) for ld in log_durs]))

    if mean_log_len(lo) >= target_log_len:
        return lo
    if mean_log_len(hi) <= target_log_len:
        return hi
    for _ in range(30):  # the length grows monotonically with b
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_log_len(mid) < target_log_len else (lo, mid)
    return 0.5 * (lo + hi)


def _active_db(mel: np.ndarray, top_db: float = 35.0) -> float:
    """Mean loudness (dB of the frame's mel power) of the frames within `top_db` of the loudest."""
    db = 10 * np.log10(np.exp(mel.astype(np.float64)).sum(-1) + 1e-10)
    return float(db[db > db.max() - top_db].mean())


def _rendered_prosody(audio: Audio, vcfg: VocoderConfig) -> tuple[float, float, float] | None:
    """(median normalised log-F0, its robust spread, active dB) of rendered audio; None without voicing."""
    from emova.audio import f0_contour
    from emova.speech.u2s import F0_REF, F0_SCALE

    f0 = f0_contour(audio) if audio.duration >= 0.25 else np.zeros(1)  # Praat needs a few periods
    if (f0 > 0).sum() < 5:
        return None
    lf = (np.log(f0[f0 > 0]) - F0_REF) / F0_SCALE
    med = float(np.median(lf))
    return med, max(0.02, 1.4826 * float(np.median(np.abs(lf - med)))), _active_db(mel_frames(audio.samples, vcfg).numpy())


def condition_targets(data: U2SData, picks: dict[str, list[int]],
                      pitch_factors: dict[str, float] | None) -> dict[str, tuple[float, float, float]]:
    """Per condition: the renderings' mean median log-F0 (normalised), F0 spread and active dB. With
    `pitch_factors`, the level of a pitch label is its normal-pitch sibling's times the label's factor."""
    from emova.speech.u2s import F0_SCALE

    lvl = {k: float(np.mean([data.stats[i][0] for i in p])) for k, p in picks.items()}
    out = {}
    for key, pick in picks.items():
        st = Style.parse(key)
        want = lvl[key]
        sibling = str(Style(gender=st.gender, emotion=st.emotion, speed=st.speed, pitch="normal"))
        if pitch_factors and sibling in lvl:
            want = lvl[sibling] + math.log(pitch_factors[st.pitch] / pitch_factors["normal"]) / F0_SCALE
        out[key] = (want, float(np.mean([data.stats[i][1] for i in pick])),
                    float(np.mean([_active_db(data.mel[i]) for i in pick])))
    return out


@torch.no_grad()
def calibrate_condition_prosody(detok, data: U2SData, per_style: int = 8, min_items: int = 4, iters: int = 3,
                                pitch_factors: dict[str, float] | None = None,
                                max_track_error: float = 0.35) -> torch.Tensor:
    """Per-condition corrections of what the detokenizer renders, stored next to the prototypes
    (`StylePrototypes.prosody`, one `ProsodyOffsets` row per condition string).

    The global maps (`calibrate_prosody`, `calibrate_rendered_prosody`) fit one line across all
    conditions; the decoder's rendering error is not uniform (a male voice asked for a high pitch comes
    out lower than the renderings, a female one does not; a sad style comes out too loud). For every
    condition with at least `min_items` training renderings, decode up to `per_style` of their units with
    the condition's prototype (global maps applied) and compare with the renderings themselves:
      * duration: the log(1 + frames) offset per unit whose utterance lengths match the renderings'
        (solved on the predicted durations);
      * F0 level, F0 excursion and loudness: `iters` rounds of correcting each by what the audio shows
        (Praat median and robust spread of log-F0, mean dB of active frames; median over the items whose
        rendered F0 is within `max_track_error` (normalised log-F0) of what the U2S asked for).
    Pitch labels: with `pitch_factors` ({"low": 0.8, "normal": 1.0, "high": 1.25}), the target F0 level of
    a condition is its normal-pitch sibling's (same gender, emotion, speed) times the label's factor,
    so the labels keep the spacing the corpus was rendered to have even where a TTS engine realised
    less of it. Training renderings only; held-out data never enters. Conditions without data keep 0."""

    u2s, cfg = detok.u2s, detok.u2s.cfg
    vcfg = detok.vocoder_config
    protos = detok.prototypes
    table = torch.zeros(len(protos), 4)
    rng = random.Random(2)
    picks = {k: rng.sample(ids, min(per_style, len(ids))) for k, ids in sorted(data.by_style.items())
             if k in protos.index and len(ids) >= min_items}
    targets = condition_targets(data, picks, pitch_factors)
    for key, pick in tqdm(picks.items(), desc="condition prosody", unit="style", leave=False):
        want_lvl, want_sp, want_db = targets[key]
        style = protos.vector(key)[None].float()
        head = u2s.prosody(style)[0]
        units = [torch.from_numpy(data.units[i].astype(np.int64))[None] for i in pick]
        log_durs = []
        for u in units:
            h, m = u2s.encode(u, torch.tensor([u.shape[1]]))
            ld = u2s.predict_log_durations(h, style, m)[0] + cfg.rate_gain * (head[2] - cfg.rate_center) + cfg.rate_bias
            log_durs.append(ld.numpy())
        rate = _solve_rate_offset(log_durs, float(np.mean([math.log(len(data.mel[i])) for i in pick])), -0.5, 0.5)
        level, log_spread, gain = 0.0, 0.0, 0.0
        for _ in range(iters):
            got = []
            for u in units:
                out = u2s.infer(u, style, level_offset=level, rate_offset=rate, spread_scale=math.exp(log_spread))
                r = _rendered_prosody(Audio(detok.vocode(out["mel"], gain), detok.sample_rate), vcfg)
                voiced = out["voiced"] > 0
                asked = float(out["lf0"][voiced].median()) if voiced.any() else math.nan
                # a render whose median F0 is far (> ~20 %) from what was asked is a tracking error (octave
                # jumps, creak below ~80 Hz), not a level to correct
                if r is not None and abs(r[0] - asked) <= max_track_error:
                    got.append(r)
            if not got:
                break
            g = np.median(np.array(got), axis=0)
            level = float(np.clip(level + want_lvl - g[0], -0.4, 0.4))
            log_spread = float(np.clip(log_spread + math.log(want_sp / g[1]), -0.7, 0.7))
            gain = float(np.clip(gain + want_db - g[2], -12.0, 12.0))
        table[protos.index[key]] = torch.tensor([level, rate, log_spread, gain])
    return table


@torch.no_grad()
def calibrate_mel_gv(u2s: U2SModel, data: U2SData, protos: StylePrototypes, n: int = 200) -> dict[str, list[float]]:
    """Global-variance post-filter constants: per mel bin, the spread of real training mels against the
    spread of what the U2S draws for the same items (its own durations and F0, the item's condition
    prototype), both around the real mels' per-bin mean. Exactly timed (neutral) items; scale clipped to
    [1, 1.5]. Training renderings only."""
    rng = random.Random(3)
    ids = [i for i in range(len(data)) if data.exact[i]] or list(range(len(data)))
    ids = rng.sample(ids, min(n, len(ids)))
    real = np.concatenate([data.mel[i].astype(np.float32) for i in ids])
    mean = real.mean(0)
    drawn = []
    saved = (u2s.cfg.gv_mean, u2s.cfg.gv_scale)
    u2s.cfg.gv_mean = u2s.cfg.gv_scale = None
    try:
        for i in ids:
            u = torch.from_numpy(data.units[i].astype(np.int64))[None]
            drawn.append(u2s.infer(u, protos.vector(data.meta[i]["style"])[None].float())["mel"].float().numpy())
    finally:
        u2s.cfg.gv_mean, u2s.cfg.gv_scale = saved
    drawn_all = np.concatenate(drawn)
    scale = np.sqrt(((real - mean) ** 2).mean(0) / np.maximum(((drawn_all - mean) ** 2).mean(0), 1e-6))
    return {"gv_mean": [float(x) for x in mean], "gv_scale": [float(x) for x in np.clip(scale, 1.0, 1.5)]}


@torch.no_grad()
def build_prototypes(encoder: StyleEncoder, data: U2SData, per_style: int) -> StylePrototypes:
    encoder.eval()

    def encode(ids: list[int]) -> torch.Tensor:
        mels = [torch.from_numpy(data.mel[i].astype(np.float32)) for i in ids]
        lens = torch.tensor([len(m) for m in mels])
        return encoder(torch.nn.utils.rnn.pad_sequence(mels, batch_first=True), lens)

    return StylePrototypes.build(encode, [(i, m["style"]) for i, m in enumerate(data.meta)], per_style)


def export_detokenizer(cfg: U2STrainConfig, out: str | Path | None = None, vocoder_kind: str | None = None):
    from emova.speech.detokenizer import SpeechDetokenizer

    out = out or cfg.export_dir
    if out is None:
        raise ValueError("no export directory given")
    bundle = U2SBundle(cfg.exported_u2s_config(), StyleEncoderConfig.from_dict(cfg.style_encoder))
    ck = _u2s_stage_checkpoint(cfg)
    load_checkpoint(ck, bundle)
    bundle.eval()
    data = U2SData(cfg.cache_dir, cfg.speaking_voices())
    bundle.u2s.cfg.shape_gain = calibrate_shape_gain(bundle, data)
    protos = build_prototypes(bundle.style_encoder, data, cfg.prototypes_per_style)
    for k, v in calibrate_prosody(bundle, data, protos).items():
        setattr(bundle.u2s.cfg, k, v)
    kind = vocoder_kind or cfg.export_vocoder
    vcfg = cfg.vocoder_config(kind)
    voc = build_vocoder(vcfg)
    vocoder_from = None
    if kind != "griffin_lim":  # the GTA-finetuned vocoder when that stage ran
        vocoder_from = _load_vocoder_weights(cfg, voc, ("vocoder_gta", "vocoder"))
    if cfg.mel_gv:  # before the closed loop, which should measure the renderer as it will run
        for k, v in calibrate_mel_gv(bundle.u2s, data, protos).items():
            setattr(bundle.u2s.cfg, k, v)
    detok = SpeechDetokenizer(bundle.u2s, bundle.style_encoder, voc, protos)
    for k, v in calibrate_rendered_prosody(detok, data).items():
        setattr(bundle.u2s.cfg, k, v)
    if cfg.condition_prosody:
        protos.prosody = calibrate_condition_prosody(detok, data, pitch_factors=cfg.pitch_factors)
    info = {"u2s_checkpoint": str(ck), "vocoder_checkpoint": vocoder_from, "trained_on": cfg.corpus,
            "tokenizer": cfg.tokenizer, "speaking_voices": cfg.speaking_voices()}
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
    if "u2s" in stages:
        train_u2s_model(cfg, progress)
    if "finetune" in stages and cfg.finetune:
        base = latest_checkpoint(out / "u2s")
        if base is None and latest_checkpoint(out / "u2s_finetune") is None:
            raise ValueError(f"the finetune stage starts from the u2s stage: no checkpoint under {out / 'u2s'}")
        train_u2s_model(cfg.finetune_config(), progress, "u2s_finetune", base)
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
