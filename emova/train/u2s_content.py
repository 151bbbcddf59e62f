"""A content loss for the U2S: a phone recogniser (the "judge") on the U2S's own mel features.

The U2S learns its mels by L1 regression, which averages away the spectral detail that tells phones
apart: the ground-truth mels of the held-out voice, vocoded, are understood by pocketsphinx at WER ~0.19,
the U2S's mels of the same units at ~0.5 even with the clips' own timing and pitch (docs/u2s.md). The
judge is a small CTC phone recogniser trained on ground-truth mels (80-bin, hop 256) of the renderings the
U2S learns to speak. Frozen, it scores the U2S's teacher-forced mels against the utterance's phone
transcript; that CTC loss (`w_content`) pushes the decoder to keep what makes the phones recognisable.

Stage `judge` of `emova train u2s` (runs when `w_content > 0`): resumable, progress shown, a held-out
phone error rate (PER) logged — the judge should be a good listener before it grades the U2S.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from emova.data.speech.corpus import read_manifest
from emova.data.speech.phones import PHONE_TO_ID, VOCAB_SIZE, ctc_collapse
from emova.eval.metrics import error_rate
from emova.speech.features import normalise_per_feature
from emova.train.accel import fresh_accelerator, optimizer_step
from emova.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from emova.train.u2s_config import U2STrainConfig
    from emova.train.u2s_data import U2SData


@dataclass
class PhoneJudgeConfig:
    n_mels: int = 80
    dim: int = 192
    layers: int = 3
    heads: int = 4
    kernel: int = 5
    dropout: float = 0.1
    n_phones: int = VOCAB_SIZE  # incl. the CTC blank (0)

    def __post_init__(self) -> None:
        for k in ("n_mels", "dim", "layers", "heads", "kernel", "n_phones"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"PhoneJudgeConfig.{k} must be an integer >= 1, got {v!r}")
        if self.dim % self.heads or self.kernel % 2 == 0:
            raise ValueError("PhoneJudgeConfig: dim must be divisible by heads and kernel must be odd")

    @classmethod
    def from_dict(cls, d: dict) -> PhoneJudgeConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown phone judge config keys {sorted(unknown)}")
        return cls(**d)


class PhoneJudge(nn.Module):
    """mel (B, F, n_mels) + frame mask (B, F) → phone logits (B, F, n_phones) at the mel frame rate."""

    def __init__(self, cfg: PhoneJudgeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k = cfg.kernel
        self.conv = nn.ModuleList([nn.Conv1d(cfg.n_mels, cfg.dim, k, padding=k // 2),
                                   nn.Conv1d(cfg.dim, cfg.dim, k, padding=k // 2)])
        self.pos = nn.Conv1d(cfg.dim, cfg.dim, 15, padding=7, groups=cfg.heads)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.dim * 4, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.n_phones)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mel.dim() != 3 or mel.shape[-1] != self.cfg.n_mels:
            raise ValueError(f"phone judge expects mel (B, F, {self.cfg.n_mels}), got {tuple(mel.shape)}")
        m = mask[:, None].to(mel.dtype)  # padding stays zero between the convolutions
        x = normalise_per_feature(mel.transpose(1, 2), mask.sum(1))  # mask: real frames first
        for conv in self.conv:
            x = F.gelu(conv(x)) * m
        x = (x + F.gelu(self.pos(x)) * m).transpose(1, 2)
        x = self.encoder(x, src_key_padding_mask=~mask if mel.shape[0] > 1 else None)
        return self.head(self.norm(x))


def ctc_phone_loss(logits: torch.Tensor, mask: torch.Tensor, phones: torch.Tensor,
                   phone_lens: torch.Tensor) -> torch.Tensor:
    """Mean CTC loss per target phone (items whose transcript cannot fit their frames contribute 0)."""
    logp = logits.float().log_softmax(-1).transpose(0, 1)  # (F, B, V)
    return F.ctc_loss(logp, phones, mask.sum(1), phone_lens, blank=0, reduction="mean", zero_infinity=True)


def item_phones(data: U2SData, corpus: str | Path) -> list[list[int]]:
    """The phone ids of every cached item, from the corpus manifest's transcripts."""
    by_id = {r["id"]: r.get("phones") for r in read_manifest(corpus)}
    out = []
    for m in data.meta:
        ph = by_id.get(m.get("source", m["id"]))  # an augmented copy says what its source was
        if ph is None:
            raise ValueError(f"corpus {corpus} has no phone transcript for cached item {m['id']}; the U2S cache "
                             f"and the corpus do not belong together")
        unknown = [p for p in ph.split() if p not in PHONE_TO_ID]
        if unknown:
            raise ValueError(f"corpus item {m['id']}: unknown phones {unknown[:3]}")
        out.append([PHONE_TO_ID[p] for p in ph.split()])
    return out


def phone_batch(phones: list[list[int]], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(phones[i]) for i in idx])
    pad = torch.zeros(len(idx), max(1, int(lens.max())), dtype=torch.long)
    for b, i in enumerate(idx):
        pad[b, : lens[b]] = torch.tensor(phones[i])
    return pad, lens


def _spec_augment(mel: torch.Tensor, rng: random.Random) -> torch.Tensor:
    mel = mel.clone()
    B, Fr, M = mel.shape
    for b in range(B):
        for _ in range(2):
            w = rng.randint(0, 10)
            f0 = rng.randint(0, max(0, M - w))
            mel[b, :, f0 : f0 + w] = mel[b].mean()
        for _ in range(2):
            w = rng.randint(0, 8)
            t0 = rng.randint(0, max(0, Fr - w))
            mel[b, t0 : t0 + w] = mel[b].mean()
    return mel


def _split(data: U2SData, held_out_groups: float = 0.03) -> tuple[list[int], list[int]]:
    groups = sorted({m["group"] for m in data.meta})
    held = set(random.Random(17).sample(groups, max(1, int(len(groups) * held_out_groups))))
    train = [i for i, m in enumerate(data.meta) if m["group"] not in held]
    val = [i for i, m in enumerate(data.meta) if m["group"] in held]
    return train, val


def judge_per(judge: PhoneJudge, mels: list[np.ndarray], phones: list[list[int]]) -> float:
    """Phone error rate of greedy CTC decoding on ground-truth mels."""
    judge.eval()
    hyps = []
    with torch.no_grad():
        for m in mels:
            x = torch.from_numpy(np.asarray(m, dtype=np.float32))[None]
            hyps.append(ctc_collapse(judge(x, torch.ones(1, x.shape[1], dtype=torch.bool))[0].argmax(-1).tolist()))
    return error_rate(phones, hyps)


def train_phone_judge(cfg: U2STrainConfig, progress: bool = True) -> Path:
    """Stage `judge`: the CTC phone recogniser on ground-truth mels of the speaking voices (resumable)."""
    from emova.train.u2s import _keep_last, _lr, _open_log
    from emova.train.u2s_data import U2SData

    torch.manual_seed(cfg.seed + 2)
    run = Path(cfg.out_dir) / "judge"
    run.mkdir(parents=True, exist_ok=True)
    jcfg = PhoneJudgeConfig.from_dict(cfg.judge)
    (run / "judge_config.json").write_text(json.dumps(asdict(jcfg), indent=1))
    model = PhoneJudge(jcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.judge_lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, epoch, elapsed0 = 0, 0, 0.0
    ck = latest_checkpoint(run)
    if ck is not None:  # resumes at the start of the checkpoint's epoch
        meta = load_checkpoint(ck, model, opt)
        step, epoch, elapsed0 = meta["step"], meta["epoch"], meta.get("elapsed", 0.0)
        print(f"resuming judge from {ck} (step {step})")
    data = U2SData(cfg.cache_dir, cfg.speaking_voices(), cfg.augment_tags())
    phones = item_phones(data, cfg.corpus)
    train_idx, val_idx = _split(data)
    val_idx = val_idx[:60]
    acc = fresh_accelerator(cfg.bf16)
    model, opt = acc.prepare(model, opt)
    logf, writer = _open_log(run / "log.csv", ["step", "lr", "ctc", "val_per", "elapsed_s"], step == 0)
    bar = tqdm(total=cfg.judge_steps, initial=step, desc="train judge", unit="step", disable=not progress)
    t0 = time.time() - elapsed0
    # length-bucketed batches over the training items only
    train_set = set(train_idx)

    def out_of_time() -> bool:
        return bool(cfg.judge_minutes) and time.time() - t0 > 60 * cfg.judge_minutes

    while step < cfg.judge_steps and not out_of_time():
        batches = [[i for i in b if i in train_set] for b in data.batches(epoch, cfg.seed + 5, cfg.batch_frames)]
        for b in (b for b in batches if b):
            if step >= cfg.judge_steps or out_of_time():
                break
            rng = random.Random(cfg.seed * 31 + step)
            Fr = max(len(data.mel[i]) for i in b)
            mel = torch.zeros(len(b), Fr, jcfg.n_mels)
            mask = torch.zeros(len(b), Fr, dtype=torch.bool)
            for k, i in enumerate(b):
                mel[k, : len(data.mel[i])] = torch.from_numpy(data.mel[i].astype(np.float32))
                mask[k, : len(data.mel[i])] = True
            ph, ph_lens = phone_batch(phones, b)
            lr = _lr(step, time.time() - t0, cfg.judge_lr, 200, cfg.judge_steps, cfg.judge_minutes)
            model.train()
            with acc.autocast():
                logits = acc.unwrap_model(model)(_spec_augment(mel, rng), mask)
            loss = ctc_phone_loss(logits, mask, ph, ph_lens)
            optimizer_step(acc, opt, model.parameters(), loss, lr)
            step += 1
            bar.update()
            val = ""
            if step % (cfg.save_every * 2) == 0:
                val = f"{judge_per(acc.unwrap_model(model), [data.mel[i] for i in val_idx], [phones[i] for i in val_idx]):.4f}"
            if step % cfg.log_every == 0 or val:
                writer.writerow([step, f"{lr:.3e}", f"{loss.item():.4f}", val, f"{time.time() - t0:.1f}"])
                logf.flush()
                bar.set_postfix(ctc=f"{loss.item():.3f}", **({"per": val} if val else {}))
            if step % cfg.save_every == 0:
                save_checkpoint(run / f"step-{step}", acc.unwrap_model(model), opt,
                                {"step": step, "epoch": epoch, "batch_in_epoch": 0, "elapsed": time.time() - t0})
                _keep_last(run)
        else:
            epoch += 1
            continue
        break
    bar.close()
    per = judge_per(acc.unwrap_model(model), [data.mel[i] for i in val_idx], [phones[i] for i in val_idx])
    writer.writerow([step, "", "", f"{per:.4f}", f"{time.time() - t0:.1f}"])
    logf.close()
    save_checkpoint(run / f"step-{step}", acc.unwrap_model(model), opt,
                    {"step": step, "epoch": epoch, "batch_in_epoch": 0, "elapsed": time.time() - t0, "val_per": per})
    _keep_last(run)
    print(f"phone judge: held-out PER {per:.3f} on {len(val_idx)} ground-truth mels")
    return run


def load_judge(cfg: U2STrainConfig) -> PhoneJudge:
    """The trained judge of this run (frozen, eval mode)."""
    run = Path(cfg.out_dir) / "judge"
    ck = latest_checkpoint(run)
    if ck is None:
        raise ValueError(f"w_content > 0 needs a trained phone judge: no checkpoint under {run}; run the judge stage")
    jcfg = PhoneJudgeConfig.from_dict(json.loads((run / "judge_config.json").read_text()))
    judge = PhoneJudge(jcfg)
    load_checkpoint(ck, judge)
    judge.eval()
    for p in judge.parameters():
        p.requires_grad_(False)
    return judge


__all__ = ["PhoneJudge", "PhoneJudgeConfig", "ctc_phone_loss", "item_phones", "judge_per", "load_judge",
           "train_phone_judge"]
