"""Voice-normalising fine-tune of the S2U: every voice's speech gets the units the anchor voice's speech gets.

The S2U hears a new speaker in units that drift from the ones the LLM and the U2S were trained on (a probe of
units carries the speaker at 72 %, docs/s2u.md), and the U2S renders the anchor voice's units most intelligibly
(docs/u2s.md). This fine-tune starts from a trained tokenizer (the *teacher*, kept frozen) and trains a copy
(the *student*) so that, for each training sentence,

    student(any voice, any style, augmented)  ≈  teacher(anchor voice, neutral)      along a DTW alignment
    student(anchor voice, neutral)            =  teacher(anchor voice, neutral)      frame by frame

    L = w_map · mean ‖z_s[i] − q_a[j]‖²  over aligned frames (i, j)
      + w_self · mean ‖z_s(anchor) − q_a‖²
      + w_ctc · CTC(phones | student's codes)

z is the student's bounded FSQ input and q_a the teacher's quantised anchor codes, both in bins. Frames are
aligned by DTW over the cosine distance of the teacher's phonetic features (its CTC side's hidden states,
which a speaker changes little), computed without gradient. The anchor corpus is
`emova.data.speech.anchor.render_anchor_corpus` (one neutral rendering per training text). The codebook and
the teacher's units of the anchor voice are kept, so the LLM and U2S trained on the teacher's units still
read the student's.

`target: self` is the milder variant, augmentation invariance: each training clip, sped up or slowed down and
with its mel axis warped (as a differently sized speaker would say it), toward the teacher's units of the clip
itself, so every training voice keeps its own codes. Resumable, progress shown, a CSV log and plot, as
`emova.train.s2u`.
"""

from __future__ import annotations

import copy
import csv
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from emova.speech.s2u import S2UModel
from emova.speech.tokenizer import SpeechTokenizer
from emova.train.accel import fresh_accelerator
from emova.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_step_checkpoint
from emova.train.plots import plot_log
from emova.train.s2u import GroupedCorpus, _augment_wave, _freq_warp, batch_mels, dtw_path, lr_at
from emova.yaml_io import load_dataclass_config


@dataclass
class S2UAnchorConfig:
    corpus: str = "data_cache/speech"
    anchor_corpus: str = "data_cache/speech_anchor_kal16"
    # "anchor": every voice toward the anchor voice's units of the same text; "self": each clip, augmented (speed,
    # mel warp), toward its own clean units (augmentation invariance: the codes of every training voice are kept)
    target: str = "anchor"
    init: str = "emova-tiny"  # the teacher: a tokenizer name or directory
    out_dir: str = "runs/s2u_anchor"
    splits: list[str] = field(default_factory=lambda: ["train", "fsdd_train"])
    max_steps: int = 1500
    batch_seconds: float = 90.0  # audio seconds per batch (student inputs; anchors come on top)
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    w_map: float = 1.0
    w_self: float = 1.0
    w_ctc: float = 0.5
    speed_perturb: float = 0.1
    freq_warp: float = 0.1
    bf16: bool = True
    seed: int = 0
    save_every: int = 250
    log_every: int = 10
    keep_checkpoints: int = 2

    @classmethod
    def load(cls, path: str | Path, **overrides) -> S2UAnchorConfig:
        return load_dataclass_config(cls, path, overrides)

    def __post_init__(self) -> None:
        if self.target not in ("anchor", "self"):
            raise ValueError(f"target must be 'anchor' or 'self', got {self.target!r}")


@torch.no_grad()
def teacher_view(teacher: S2UModel, mel: torch.Tensor, mel_lens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The teacher's quantised codes (in bins) and its phonetic features (CTC side's hidden states)."""
    o = teacher.encode(mel, mel_lens)
    pad = o["pad_mask"]
    phon = teacher.post(teacher.from_code(o["q"]), pad if mel.shape[0] > 1 else None)
    return {"codes": o["q"].float(), "phon": F.normalize(phon.float(), dim=-1), "lengths": o["lengths"]}


class AnchoredCorpus:
    """The training corpus's groups, each with the anchor corpus's rendering of the same text."""

    def __init__(self, cfg: S2UAnchorConfig) -> None:
        self.train = GroupedCorpus(cfg.corpus, cfg.splits)
        if cfg.target == "self":  # each clip is its own reference
            self.anchor, self.anchor_of = self.train, list(range(len(self.train.rows)))
            return
        self.anchor = GroupedCorpus(cfg.anchor_corpus, ["anchor"])
        by_text = {r["text"]: i for i, r in enumerate(self.anchor.rows)}
        missing = {r["text"] for r in self.train.rows} - set(by_text)
        if missing:
            raise ValueError(f"anchor corpus {cfg.anchor_corpus} lacks {len(missing)} training texts (e.g. "
                             f"{sorted(missing)[0]!r}); render it from {cfg.corpus} with "
                             "emova.data.speech.anchor.render_anchor_corpus")
        self.anchor_of = [by_text[r["text"]] for r in self.train.rows]


def train_s2u_anchor(cfg: S2UAnchorConfig, progress: bool = True, teacher: S2UModel | None = None) -> Path:
    """Train (or resume) the voice-normalising fine-tune; returns the run directory (`final/` at the end).
    `teacher`: the model of `cfg.init` when the caller has it loaded already."""
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    teacher = (teacher or SpeechTokenizer.from_pretrained(cfg.init).model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    (out / "model_config.json").write_text(json.dumps(teacher.cfg.to_dict(), indent=1))
    model = copy.deepcopy(teacher)
    for p in model.parameters():
        p.requires_grad_(True)
    for p in model.code_norm.parameters():  # the quantiser's input scale stays the teacher's
        p.requires_grad_(False)
    accelerator = fresh_accelerator(cfg.bf16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    step, epoch, batch_in_epoch = 0, 0, 0
    ck = latest_checkpoint(out)
    if ck is not None:
        meta = load_checkpoint(ck, model, opt)
        step, epoch, batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        print(f"resuming from {ck} (step {step})")
    model, opt = accelerator.prepare(model, opt)
    data = AnchoredCorpus(cfg)
    corpus = data.train
    log_path = out / "log.csv"
    new_log = not log_path.exists() or step == 0
    logf = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(logf)
    if new_log:
        writer.writerow(["step", "epoch", "lr", "loss", "map", "self", "ctc", "agree_map", "agree_self",
                         "sec_per_step", "elapsed_s"])
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train s2u anchor", unit="step", disable=not progress)
    t0 = t_last = time.time()
    model.train()
    model.code_norm.eval()  # running statistics, as at inference
    while step < cfg.max_steps:
        batches = corpus.batches(epoch, cfg.seed, cfg.batch_seconds)
        for bi in range(batch_in_epoch, len(batches)):
            if step >= cfg.max_steps:
                break
            idx = batches[bi]
            rng = random.Random(cfg.seed * 7919 + step)
            anchors = sorted({data.anchor_of[i] for i in idx})
            a_pos = {a: k for k, a in enumerate(anchors)}
            waves = [_augment_wave(corpus.waveform(i), rng, cfg.speed_perturb) for i in idx]
            mel, mel_lens = batch_mels(waves)
            mel = _freq_warp(mel, rng, cfg.freq_warp)
            a_mel, a_lens = batch_mels([torch.from_numpy(data.anchor.waveform(a)) for a in anchors])
            tv_s = teacher_view(teacher, mel, mel_lens)
            tv_a = teacher_view(teacher, a_mel, a_lens)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            with accelerator.autocast():
                o = model(mel, mel_lens)
                oa = model.encode(a_mel, a_lens)
            z, za = o["z"].float(), oa["z"].float()
            map_terms, agree_m = [], []
            for b, i in enumerate(idx):
                k = a_pos[data.anchor_of[i]]
                ls, la = int(tv_s["lengths"][b]), int(tv_a["lengths"][k])
                wp = torch.from_numpy(dtw_path(tv_s["phon"][b, :ls], tv_a["phon"][k, :la])).long()
                target = tv_a["codes"][k, wp[:, 1]]
                map_terms.append(((z[b, wp[:, 0]] - target) ** 2).sum(-1).mean())
                agree_m.append((z[b, wp[:, 0]].round() == target).all(-1).float().mean())
            loss_map = torch.stack(map_terms).mean()
            valid_a = ~oa["pad_mask"]
            loss_self = ((za - tv_a["codes"]) ** 2).sum(-1)[valid_a].mean()
            agree_s = (za.round() == tv_a["codes"]).all(-1)[valid_a].float().mean()
            logp = F.log_softmax(o["logits"].float(), -1).transpose(0, 1)
            targets = [torch.tensor(corpus.targets[i]) for i in idx]
            ctc = F.ctc_loss(logp, torch.cat(targets), o["lengths"], torch.tensor([len(t) for t in targets]),
                             blank=0, zero_infinity=True)
            loss = cfg.w_map * loss_map + cfg.w_self * loss_self + cfg.w_ctc * ctc
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            bar.update()
            if step % cfg.log_every == 0:
                now = time.time()
                writer.writerow([step, epoch, f"{lr_at(step, cfg):.3e}", f"{loss.item():.4f}", f"{loss_map.item():.4f}",
                                 f"{loss_self.item():.4f}", f"{ctc.item():.4f}",
                                 f"{torch.stack(agree_m).mean().item():.4f}", f"{agree_s.item():.4f}",
                                 f"{(now - t_last) / cfg.log_every:.3f}", f"{now - t0:.1f}"])
                logf.flush()
                t_last = now
                bar.set_postfix(map=f"{loss_map.item():.3f}", anchor=f"{loss_self.item():.3f}", ctc=f"{ctc.item():.3f}")
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
    save_checkpoint(out / "final", accelerator.unwrap_model(model), None, {"step": step})
    plot_log(log_path, ("map", "self", "ctc"))
    return out
