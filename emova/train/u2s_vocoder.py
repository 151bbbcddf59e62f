"""Training the U2S vocoder: the `vocoder` stage (Vocos on ground-truth mels) and the `vocoder_gta` stage
(continued on ground-truth-aligned, teacher-forced U2S mels). Both resume from their latest checkpoint."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from emova.audio import Audio
from emova.data.speech.corpus import read_manifest
from emova.speech.detokenizer import frame_f0_hz
from emova.speech.style_encoder import StyleEncoderConfig
from emova.speech.vocoder import (
    VocoderConfig,
    VocosVocoder,
    build_vocoder,
    mel_frames,
    mel_l1,
    multi_resolution_stft_loss,
)
from emova.train.accel import fresh_accelerator, optimizer_step
from emova.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from emova.train.plots import plot_log
from emova.train.u2s import (
    U2SBundle,
    U2STrainConfig,
    _keep_last,
    _lr,
    _open_log,
    _u2s_stage_checkpoint,
    teacher_forced_mels,
)
from emova.train.u2s_data import U2SData, f0_track


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
    tracks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # Praat's F0 of a whole wave, once (F0-input vocoder)
    logf, writer = _open_log(run / "log.csv", ["step", "lr", "total", "stft", "mel", "elapsed_s"], step == 0)
    bar = tqdm(total=cfg.vocoder_steps, initial=step, desc="train vocoder", unit="step", disable=not progress)
    t0 = time.time() - elapsed0
    model.train()
    while step < cfg.vocoder_steps and not (cfg.vocoder_minutes and time.time() - t0 > 60 * cfg.vocoder_minutes):
        rng = random.Random(cfg.seed * 104729 + step)
        segs, f0s = [], []
        for _ in range(cfg.vocoder_batch):
            k = rng.randrange(len(waves))
            w = waves[k]
            o = rng.randrange(0, len(w) - seg)
            segs.append(torch.from_numpy(w[o : o + seg]))
            if vcfg.f0_input:
                if k not in tracks:
                    tracks[k] = f0_track(w, vcfg.sample_rate, vcfg.hop, len(w) // vcfg.hop + 1)
                f0s.append(_f0_at(tracks[k], o / vcfg.hop, seg // vcfg.hop + 1))
        x = torch.stack(segs)  # (B, seg)
        mel = mel_frames(x, vcfg)  # (B, seg / hop + 1, n_mels)
        lr = _lr(step, time.time() - t0, cfg.vocoder_lr, 200, cfg.vocoder_steps, cfg.vocoder_minutes)
        step += 1
        _vocoder_step(cfg, acc, model, opt, mel, x, seg, vcfg, lr, step, run, writer, logf, bar, t0,
                      torch.stack(f0s) if f0s else None)
    return _finish_vocoder_run(acc, model, opt, step, run, logf, bar, t0)


def _f0_at(track: tuple[np.ndarray, np.ndarray], start: float, n: int) -> torch.Tensor:
    """F0 in Hz (0 unvoiced) of `n` frames from frame position `start` of a whole wave's `f0_track`."""
    lf0, vuv = track
    t = start + np.arange(n)
    grid = np.arange(len(lf0))
    return frame_f0_hz(np.interp(t, grid, lf0), np.interp(t, grid, vuv.astype(np.float32)) > 0.5)


def _vocoder_step(cfg: U2STrainConfig, acc, model: nn.Module, opt, mel: torch.Tensor, x: torch.Tensor, seg: int,
                  vcfg: VocoderConfig, lr: float, step: int, run: Path, writer, logf, bar, t0: float,
                  f0_hz: torch.Tensor | None = None) -> None:
    """One vocoder update (multi-resolution STFT + mel L1 against the waveform `x`), then log / checkpoint.
    An F0-conditioned vocoder needs `f0_hz` (B, F)."""
    with acc.autocast():
        y = model(mel, f0_hz)
    y = y.float()[:, :seg]
    stft = multi_resolution_stft_loss(y, x[:, : y.shape[1]])
    ml = mel_l1(y, x[:, : y.shape[1]], vcfg)
    loss = stft + ml
    optimizer_step(acc, opt, model.parameters(), loss, lr)
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
        # a mel-only vocoder may grow an F0 input (zero-initialised, so it starts as the source vocoder)
        grows = (isinstance(src, VocosVocoder) and voc.cfg.f0_input and not src.cfg.f0_input
                 and replace(src.cfg, f0_input=True) == voc.cfg and set(a) - set(b) == {k for k in a if k.startswith("f0_")}
                 and set(b) <= set(a))
        if not grows and (getattr(src, "cfg", None) != voc.cfg or a.keys() != b.keys()):
            raise ValueError(f"init_from {cfg.init_from}: its vocoder is not the configured {voc.cfg.kind} vocoder")
        voc.load_state_dict({k: v.float() for k, v in b.items()}, strict=not grows)
        return f"{cfg.init_from} (vocoder{', F0 input added' if grows else ''})"
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
    data = U2SData(cfg.cache_dir, cfg.speaking_voices(), cfg.augment_tags())
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
            m = data.meta[i]  # an augmented copy's waveform lives in the cache
            src = Path(cfg.cache_dir) / m["wav"] if "wav" in m else paths[m["id"]]
            waves[i] = Audio.load(src, vcfg.sample_rate).samples
        return waves[i]

    def gta_mel(batch_ids: list[int]) -> None:
        todo = [i for i in dict.fromkeys(batch_ids) if i not in gta]
        if todo:
            for i, (mel, _) in zip(todo, teacher_forced_mels(bundle, data, todo)):
                gta[i] = mel

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
        mels, segs, f0s = [], [], []
        for k, i in enumerate(pick):
            w = wave(i)
            last = min(len(data.mel[i]), len(w) // vcfg.hop + 1) - seg_frames - 1
            o = rng.randrange(0, max(1, last))
            x = torch.from_numpy(w[o * vcfg.hop : o * vcfg.hop + seg])
            x = F.pad(x, (0, seg - len(x)))
            segs.append(x)
            mels.append(gta[i][o : o + seg_frames + 1] if k < n_gta else mel_frames(x, vcfg))
            if vcfg.f0_input:  # the cached F0 track (the one the U2S was teacher-forced with), frame-aligned
                f0 = frame_f0_hz(data.lf0[i][o : o + seg_frames + 1], data.vuv[i][o : o + seg_frames + 1])
                f0s.append(F.pad(f0, (0, seg_frames + 1 - len(f0))))
        x, mel = torch.stack(segs), torch.stack(mels)
        f0 = torch.stack(f0s) if f0s else None
        lr = _lr(step, time.time() - t0, cfg.gta_lr, 50, cfg.gta_steps, cfg.gta_minutes)
        step += 1
        _vocoder_step(cfg, acc, model, opt, mel, x, seg, vcfg, lr, step, run, writer, logf, bar, t0, f0)
    return _finish_vocoder_run(acc, model, opt, step, run, logf, bar, t0)


