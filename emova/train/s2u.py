"""Training the S2U speech tokenizer: CTC on phones + a cross-style consistency objective.

Objective per batch (batches are made of *groups*: one sentence, one voice, several styles):
    L = CTC(phones | quantised units)
      + w_cons   * mean ||z_a[i] - z_b[j]||^2  over DTW-aligned frames (i, j) of two renderings a, b
      + w_commit * mean ||z - round(z)||^2      (pulls values to FSQ bin centres: robust codes)
z is the bounded 4-d FSQ input, measured in bins. The alignment is computed, without gradient,
by DTW over cosine distance of the encoder's hidden states. Without the consistency term the units
change from one style to the next even where the recognised phones do not (see docs/s2u.md).

Runs on accelerate (bf16 autocast on CPU), saves safetensors checkpoints every `save_every`
steps, resumes from the latest one, logs a CSV a person can plot.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from emova.audio import SAMPLE_RATE, Audio
from emova.data.speech.corpus import read_manifest
from emova.data.speech.phones import VOCAB_SIZE, phones_to_ids
from emova.speech.features import s2u_features
from emova.speech.s2u import CONFIGS, S2UConfig, S2UModel
from emova.train.accel import fresh_accelerator
from emova.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_step_checkpoint
from emova.train.plots import plot_log
from emova.yaml_io import load_dataclass_config


@dataclass
class S2UTrainConfig:
    corpus: str = "data_cache/speech"
    out_dir: str = "runs/s2u"
    model: str | dict = "tiny"
    splits: list[str] = field(default_factory=lambda: ["train", "fsdd_train"])
    max_steps: int = 4000
    batch_seconds: float = 110.0  # audio seconds per batch
    lr: float = 1.5e-3
    warmup_steps: int = 300
    weight_decay: float = 0.01
    w_cons: float = 1.0
    w_commit: float = 0.1
    cons_start_step: int = 400
    w_ent: float = 0.0  # weight of the code-usage entropy bonus (keeps many units in use)
    ent_start_step: int = 0
    ent_tau: float = 0.5  # temperature of the soft FSQ level assignment
    speed_perturb: float = 0.1  # resample factor in [1-x, 1+x]
    freq_warp: float = 0.1  # mel-axis warp factor in [1-x, 1+x]
    time_mask_frames: int = 10
    bf16: bool = True
    seed: int = 0
    save_every: int = 250
    log_every: int = 10
    keep_checkpoints: int = 2

    @classmethod
    def load(cls, path: str | Path, **overrides) -> S2UTrainConfig:
        return load_dataclass_config(cls, path, overrides)

    def model_config(self) -> S2UConfig:
        if isinstance(self.model, str):
            if self.model not in CONFIGS:
                raise ValueError(f"unknown S2U model config {self.model!r}; expected one of {list(CONFIGS)}")
            cfg = S2UConfig.from_dict(CONFIGS[self.model].to_dict())
        else:
            cfg = S2UConfig.from_dict(self.model)
        cfg.n_phones = VOCAB_SIZE
        return cfg


class GroupedCorpus:
    """All training waveforms in memory (int16), grouped by (sentence, voice)."""

    def __init__(self, corpus: str | Path, splits: list[str]) -> None:
        root = Path(corpus)
        rows = read_manifest(root, tuple(splits))
        if not rows:
            raise ValueError(f"corpus {root} has no rows in splits {splits}")
        cache = root / f"pack_{'_'.join(splits)}.npz"
        if cache.exists():
            z = np.load(cache)
            self.wave, self.offsets = z["wave"], z["offsets"]
        else:
            chunks = []
            for r in tqdm(rows, desc="loading corpus", unit="utt"):
                chunks.append((Audio.load(root / r["path"]).samples * 32767).astype(np.int16))
            self.offsets = np.cumsum([0] + [len(c) for c in chunks])
            self.wave = np.concatenate(chunks)
            np.savez(cache, wave=self.wave, offsets=self.offsets)
        self.rows = rows
        self.targets = [phones_to_ids(r["phones"].split()) for r in rows]
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(r["group"], []).append(i)
        self.groups = list(groups.values())
        self.durations = np.diff(self.offsets) / SAMPLE_RATE

    def waveform(self, i: int) -> np.ndarray:
        return self.wave[self.offsets[i] : self.offsets[i + 1]].astype(np.float32) / 32767

    def batches(self, epoch: int, seed: int, batch_seconds: float) -> list[list[int]]:
        """Groups sorted by length in buckets, packed into batches of ~batch_seconds; shuffled."""
        rng = random.Random(seed * 1000 + epoch)
        order = list(range(len(self.groups)))
        rng.shuffle(order)
        # bucket: sort within windows of 400 groups by longest rendering → little padding
        buckets = [sorted(order[i : i + 400], key=lambda g: max(self.durations[self.groups[g]]))
                   for i in range(0, len(order), 400)]
        batches, cur = [], []
        for bucket in buckets:
            for g in bucket:
                idx = self.groups[g]
                longest = max(self.durations[idx])
                n_after = sum(len(self.groups[x]) for x in cur) + len(idx)
                if cur and longest * n_after > batch_seconds:
                    batches.append([i for x in cur for i in self.groups[x]])
                    cur = []
                cur.append(g)
        if cur:
            batches.append([i for x in cur for i in self.groups[x]])
        rng.shuffle(batches)
        return batches


def _augment_wave(w: np.ndarray, rng: random.Random, amount: float) -> torch.Tensor:
    x = torch.from_numpy(w)
    if amount > 0:
        factor = rng.uniform(1 - amount, 1 + amount)
        n = max(1, int(len(w) / factor))
        x = F.interpolate(x[None, None], size=n, mode="linear", align_corners=False)[0, 0]
    return x


def _freq_warp(mel: torch.Tensor, rng: random.Random, amount: float) -> torch.Tensor:
    """Warp the mel axis by a random factor per item (vocal-tract-length perturbation). mel: (B, M, F)"""
    if amount <= 0:
        return mel
    out = torch.empty_like(mel)
    M = mel.shape[1]
    for b in range(mel.shape[0]):
        a = rng.uniform(1 - amount, 1 + amount)
        src = torch.clamp(torch.arange(M, dtype=torch.float32) / a, 0, M - 1)
        lo = src.floor().long()
        hi = torch.clamp(lo + 1, max=M - 1)
        frac = (src - lo)[:, None]
        out[b] = mel[b, lo] * (1 - frac) + mel[b, hi] * frac
    return out


def batch_mels(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms of different lengths → the S2U's normalised log-mels (B, M, F), zero-padded, and their lengths."""
    lens = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lens.max()))
    for b, w in enumerate(waves):
        batch[b, : len(w)] = w
    return s2u_features(batch, lens)


def make_batch(corpus: GroupedCorpus, idx: list[int], rng: random.Random, cfg: S2UTrainConfig, train: bool = True):
    mel, mel_lens = batch_mels([_augment_wave(corpus.waveform(i), rng, cfg.speed_perturb if train else 0.0)
                                for i in idx])
    if train:
        mel = _freq_warp(mel, rng, cfg.freq_warp)
        if cfg.time_mask_frames > 0:
            for b in range(mel.shape[0]):
                t0 = rng.randrange(0, max(1, int(mel_lens[b]) - cfg.time_mask_frames))
                mel[b, :, t0 : t0 + rng.randrange(0, cfg.time_mask_frames + 1)] = 0.0
    targets = [torch.tensor(corpus.targets[i]) for i in idx]
    return mel, mel_lens, targets


def dtw_pairs(hidden: torch.Tensor, lengths: torch.Tensor, groups: list[list[int]]) -> list[tuple[int, int, np.ndarray]]:
    """For every pair of batch items in the same group: the DTW path between their frames."""
    h = F.normalize(hidden.detach().float(), dim=-1)
    out = []
    for g in groups:
        for a in range(len(g)):
            for b in range(a + 1, len(g)):
                ia, ib = g[a], g[b]
                out.append((ia, ib, dtw_path(h[ia, : lengths[ia]], h[ib, : lengths[ib]])))
    return out


def dtw_path(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """DTW path (N, 2) of frame index pairs between two (T, D) L2-normalised feature sequences, cosine cost."""
    import librosa

    cost = (1 - a @ b.T).numpy().astype(np.float64)
    _, wp = librosa.sequence.dtw(C=cost, backtrack=True)
    return wp[::-1].copy()


def consistency_loss(z: torch.Tensor, pairs: list[tuple[int, int, np.ndarray]]) -> torch.Tensor:
    if not pairs:
        return z.new_zeros(())
    losses = []
    for ia, ib, wp in pairs:
        wp_t = torch.from_numpy(wp).long()
        losses.append(((z[ia, wp_t[:, 0]] - z[ib, wp_t[:, 1]]) ** 2).sum(-1).mean())
    return torch.stack(losses).mean()


def usage_entropy_deficit(z: torch.Tensor, levels: list[int], tau: float) -> torch.Tensor:
    """log(K) - H(mean soft code distribution) over the given frames. z: (N, D) bounded FSQ input.

    Each dimension gets a soft assignment over its levels (softmax of -(z - level)^2 / tau); the code
    distribution is their product, averaged over frames. Minimising the deficit spreads usage over
    the codebook, which the consistency and commitment terms alone would shrink."""
    marg = []
    for d, n_lv in enumerate(levels):
        grid = torch.arange(n_lv, dtype=z.dtype, device=z.device) - n_lv // 2
        marg.append(torch.softmax(-((z[:, d : d + 1] - grid) ** 2) / tau, -1))  # (N, L_d)
    letters = "abcdefgh"[: len(levels)]
    spec = ",".join(f"n{c}" for c in letters) + "->" + letters
    p = torch.einsum(spec, *marg).reshape(-1) / z.shape[0]  # (K,)
    h = -(p * torch.log(p + 1e-12)).sum()
    return math.log(p.numel()) - h


def lr_at(step: int, cfg: Any) -> float:
    """Linear warmup to `cfg.lr` over `cfg.warmup_steps`, then cosine down to 5 % of it at `cfg.max_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def train_s2u(cfg: S2UTrainConfig, progress: bool = True) -> Path:
    """Train (or resume) the S2U; returns the run directory. The final weights are `final/`."""
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    mcfg = cfg.model_config()
    (out / "model_config.json").write_text(json.dumps(mcfg.to_dict(), indent=1))
    accelerator = fresh_accelerator(cfg.bf16)
    model = S2UModel(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    step, epoch, batch_in_epoch = 0, 0, 0
    ck = latest_checkpoint(out)
    if ck is not None:
        meta = load_checkpoint(ck, model, opt)
        step, epoch, batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        print(f"resuming from {ck} (step {step})")
    model, opt = accelerator.prepare(model, opt)
    corpus = GroupedCorpus(cfg.corpus, cfg.splits)
    log_path = out / "log.csv"
    new_log = not log_path.exists() or step == 0
    logf = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(logf)
    if new_log:
        writer.writerow(["step", "epoch", "lr", "loss", "ctc", "cons", "commit", "ent", "sec_per_step", "elapsed_s"])
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train s2u", unit="step", disable=not progress)
    t0, t_last = time.time(), time.time()
    model.train()
    while step < cfg.max_steps:
        batches = corpus.batches(epoch, cfg.seed, cfg.batch_seconds)
        for bi in range(batch_in_epoch, len(batches)):
            if step >= cfg.max_steps:
                break
            idx = batches[bi]
            rng = random.Random(cfg.seed * 7919 + step)
            mel, mel_lens, targets = make_batch(corpus, idx, rng, cfg)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            with accelerator.autocast():
                o = model(mel, mel_lens)
            logp = F.log_softmax(o["logits"].float(), -1).transpose(0, 1)  # (T, B, V)
            tgt_lens = torch.tensor([len(t) for t in targets])
            ctc = F.ctc_loss(logp, torch.cat(targets), o["lengths"], tgt_lens, blank=0, zero_infinity=True)
            z = o["z"].float()
            valid = ~o["pad_mask"]
            commit = ((z - z.round().detach()) ** 2).sum(-1)[valid].mean()
            cons = z.new_zeros(())
            if cfg.w_cons > 0 and step >= cfg.cons_start_step:
                pos = {i: k for k, i in enumerate(idx)}
                groups: dict[str, list[int]] = {}
                for i in idx:
                    groups.setdefault(corpus.rows[i]["group"], []).append(pos[i])
                pairs = dtw_pairs(o["hidden"], o["lengths"], [g for g in groups.values() if len(g) > 1])
                cons = consistency_loss(z, pairs)
            ent = z.new_zeros(())
            if cfg.w_ent > 0 and step >= cfg.ent_start_step:
                ent = usage_entropy_deficit(z[valid], mcfg.fsq_levels, cfg.ent_tau)
            loss = ctc + cfg.w_cons * cons + cfg.w_commit * commit + cfg.w_ent * ent
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update()
            if step % cfg.log_every == 0:
                now = time.time()
                writer.writerow([step, epoch, f"{lr_at(step, cfg):.3e}", f"{loss.item():.4f}", f"{ctc.item():.4f}",
                                 f"{cons.item():.4f}", f"{commit.item():.4f}", f"{ent.item():.4f}",
                                 f"{(now - t_last) / cfg.log_every:.3f}",
                                 f"{now - t0:.1f}"])
                logf.flush()
                t_last = now
                bar.set_postfix(ctc=f"{ctc.item():.3f}", cons=f"{cons.item():.3f}")
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                save_step_checkpoint(out, accelerator.unwrap_model(model), opt,
                                     {"step": step, "epoch": epoch, "batch_in_epoch": bi + 1}, cfg.keep_checkpoints)
        else:
            epoch += 1
            batch_in_epoch = 0
            continue
        break
    bar.close()
    logf.close()
    final = out / "final"
    save_checkpoint(final, accelerator.unwrap_model(model), None, {"step": step, "model_config": mcfg.to_dict()})
    plot_log(log_path, ("ctc", "cons", "commit", "ent"))
    return out


def export_s2u(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write a training checkpoint (`runs/s2u/final` or `step-N`) as a SpeechTokenizer directory."""
    from emova.speech.tokenizer import SpeechTokenizer

    checkpoint = Path(checkpoint)
    cfg_path = checkpoint.parent / "model_config.json"
    if not cfg_path.exists():
        raise ValueError(f"{checkpoint}: no model_config.json next to it; is this an S2U run directory?")
    model = S2UModel(S2UConfig.from_dict(json.loads(cfg_path.read_text())))
    load_checkpoint(checkpoint, model)
    return SpeechTokenizer(model).save_pretrained(out_dir)
