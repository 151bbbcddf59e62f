"""Training the tiny U2S detokenizer: cache → U2S + style encoder → vocoder → prototypes → export.

Stages (each resumable; the vocoder stages live in `emova.train.u2s_vocoder`, the export calibrations in
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from emova.data.speech.voices import PITCH_FACTOR
from emova.speech.refiner import MelRefinerConfig
from emova.speech.style_encoder import StyleEncoder, StyleEncoderConfig
from emova.speech.u2s import U2SConfig, U2SModel
from emova.speech.vocoder import VocoderConfig, build_vocoder
from emova.train.accel import fresh_accelerator
from emova.train.checkpoint import latest_checkpoint, load_checkpoint, load_model_tensors, save_checkpoint
from emova.train.plots import plot_log
from emova.train.u2s_adversarial import (
    MelDiscriminator,
    MelDiscriminatorConfig,
    crop_windows,
    discriminator_step,
    generator_losses,
    load_or_new_discriminator,
)
from emova.train.u2s_augment import F0Augment, augment_cache
from emova.train.u2s_calibrate import (
    build_prototypes,
    calibrate_condition_prosody,
    calibrate_mel_gv,
    calibrate_prosody,
    calibrate_rendered_prosody,
    calibrate_shape_gain,
)
from emova.train.u2s_content import PhoneJudgeConfig, ctc_phone_loss, item_phones, load_judge, phone_batch
from emova.train.u2s_data import U2SData, perturb_units, prepare_cache

STAGES = ("prepare", "judge", "u2s", "finetune", "refiner", "vocoder", "vocoder_gta", "export")
FINETUNE_KEYS = {"voices", "max_minutes", "max_steps", "lr", "warmup_steps", "model", "w_content", "unit_noise",
                 "w_adv", "w_fm", "disc", "disc_lr", "adv_warmup"}


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
    # content loss: CTC of a frozen phone recogniser (the judge, `emova.train.u2s_content`) on the U2S's
    # teacher-forced mels against the phone transcript; 0 = off (and no judge stage)
    w_content: float = 0.0
    judge: dict = field(default_factory=dict)  # PhoneJudgeConfig overrides
    judge_steps: int = 20_000
    judge_minutes: float | None = None
    judge_lr: float = 1e-3
    # unit noise: the share of input units moved to a neighbouring FSQ code (one digit ±1) during training, as a
    # new speaker's units differ from the seen voices' (`unit_noise_levels`: the tokenizer's FSQ levels)
    unit_noise: float = 0.0
    unit_noise_levels: list[int] = field(default_factory=lambda: [8, 8, 8, 8])
    # adversarial mel loss (`emova.train.u2s_adversarial`): a patch discriminator on windows of the teacher-
    # forced mel trains beside the U2S when w_adv or w_fm > 0; `w_adv` weighs the least-squares GAN term,
    # `w_fm` the feature matching; for the first `adv_warmup` steps of a run only the discriminator learns
    w_adv: float = 0.0
    w_fm: float = 0.0
    disc: dict = field(default_factory=dict)  # MelDiscriminatorConfig overrides
    disc_lr: float = 2e-4
    adv_warmup: int = 100
    # F0 augmentation (`emova.train.u2s_augment.F0Augment`): PSOLA pitch-shifted, relabelled copies of some
    # training renderings, made by the prepare stage and trained on by every later stage, e.g.
    # [{gender: male, from_pitch: normal, to_pitch: low, factor: 0.8}]; [] = none
    f0_augment: list[dict] = field(default_factory=list)
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
    # refiner stage (runs when `refiner` is a mapping, e.g. {} for the defaults): a flow-matching mel refiner
    # (`emova.speech.refiner.MelRefinerConfig` keys) trained on the frozen U2S's teacher-forced mels; export
    # puts it between the U2S and the vocoder. None: no refiner.
    refiner: dict | None = None
    refiner_steps: int = 100_000
    refiner_minutes: float | None = None
    refiner_lr: float = 5e-4
    refiner_batch: int = 16
    refiner_segment: int = 160  # mel frames per training crop
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
        for k in ("w_content", "w_adv", "w_fm"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 100.0:
                raise ValueError(f"U2STrainConfig.{k} must be a number in [0, 100], got {v!r}")
        if not isinstance(self.judge_steps, int) or self.judge_steps < 1:
            raise ValueError(f"U2STrainConfig.judge_steps must be an integer >= 1, got {self.judge_steps!r}")
        PhoneJudgeConfig.from_dict(self.judge)
        if not isinstance(self.unit_noise, (int, float)) or not 0.0 <= self.unit_noise <= 1.0:
            raise ValueError(f"U2STrainConfig.unit_noise must be a number in [0, 1], got {self.unit_noise!r}")
        if not isinstance(self.disc_lr, (int, float)) or not 0.0 < self.disc_lr <= 1.0:
            raise ValueError(f"U2STrainConfig.disc_lr must be a number in (0, 1], got {self.disc_lr!r}")
        if not isinstance(self.adv_warmup, int) or self.adv_warmup < 0:
            raise ValueError(f"U2STrainConfig.adv_warmup must be an integer >= 0, got {self.adv_warmup!r}")
        self.disc_config()
        if (not isinstance(self.unit_noise_levels, list) or not self.unit_noise_levels
                or not all(isinstance(v, int) and v >= 2 for v in self.unit_noise_levels)
                or math.prod(self.unit_noise_levels) != self.u2s_config().n_units):
            raise ValueError(f"U2STrainConfig.unit_noise_levels must be integers >= 2 whose product is the U2S's "
                             f"n_units, got {self.unit_noise_levels!r}")
        if not isinstance(self.w_mel_styled, (int, float)) or not 0.0 <= self.w_mel_styled <= 10.0:
            raise ValueError(f"U2STrainConfig.w_mel_styled must be a number in [0, 10], got {self.w_mel_styled!r}")
        if self.refiner is not None:
            self.refiner_config()
        for k in ("refiner_steps", "refiner_batch", "refiner_segment"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"U2STrainConfig.{k} must be a positive integer, got {v!r}")
        if not isinstance(self.refiner_lr, (int, float)) or not 0.0 < self.refiner_lr <= 1.0:
            raise ValueError(f"U2STrainConfig.refiner_lr must be a number in (0, 1], got {self.refiner_lr!r}")
        if not 0.0 <= self.gta_fraction <= 1.0:
            raise ValueError(f"U2STrainConfig.gta_fraction must be in [0, 1], got {self.gta_fraction!r}")
        if self.export_vocoder not in ("vocos", "griffin_lim", "hifigan"):
            raise ValueError(f"export_vocoder must be vocos, hifigan or griffin_lim, got {self.export_vocoder!r}")
        if not isinstance(self.f0_augment, list):
            raise ValueError(f"U2STrainConfig.f0_augment must be a list of mappings, got {self.f0_augment!r}")
        self.augmentations()
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

    def uses_judge(self) -> bool:
        """Whether the u2s or the finetune stage trains with the content loss (so the judge stage runs)."""
        return self.w_content > 0 or bool(self.finetune and self.finetune_config().w_content > 0)

    def uses_disc(self) -> bool:
        """Whether this stage trains against a mel discriminator."""
        return self.w_adv > 0 or self.w_fm > 0

    def disc_config(self) -> MelDiscriminatorConfig:
        return MelDiscriminatorConfig.from_dict({"n_mels": self.u2s_config().n_mels, **self.disc})

    def augmentations(self) -> list[F0Augment]:
        return [F0Augment.from_dict(a) for a in self.f0_augment]

    def augment_tags(self) -> list[str]:
        """The augmented shards every stage after prepare reads with the cache."""
        return [a.tag for a in self.augmentations()]

    def speaking_voices(self) -> list[str] | None:
        """The voices the exported detokenizer speaks (prototypes, calibration)."""
        return self.finetune.get("voices", self.voices) if self.finetune else self.voices

    def u2s_config(self) -> U2SConfig:
        return U2SConfig.from_dict(self.model)

    def exported_u2s_config(self) -> U2SConfig:
        """The architecture of the U2S that export (and vocoder_gta) load: the finetune's when there is one."""
        return self.finetune_config().u2s_config() if self.finetune else self.u2s_config()

    def refiner_config(self) -> MelRefinerConfig:
        if not isinstance(self.refiner, dict):
            raise ValueError(f"U2STrainConfig.refiner must be a mapping of MelRefinerConfig keys, got {self.refiner!r}")
        u = self.u2s_config()
        return MelRefinerConfig.from_dict({"n_mels": u.n_mels, "style_dim": StyleEncoderConfig.from_dict(
            self.style_encoder).style_dim, **self.refiner})

    def vocoder_config(self, kind: str | None = None) -> VocoderConfig:
        u = self.u2s_config()
        d = {"sample_rate": u.sample_rate, "n_fft": u.n_fft, "hop": u.hop, "win": u.win, "n_mels": u.n_mels,
             **self.vocoder}
        vcfg = VocoderConfig.from_dict(d)
        return vcfg.with_kind(kind) if kind else vcfg


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
    added = _grow_into(bundle, load_model_tensors(ck, "u2s."), load_model_tensors(ck, "style_encoder."),
                       f"checkpoint {ck}")
    print(f"{run_name} starts from {ck}" + (f" (+{len(added)} new tensors, identity-initialised)" if added else ""))


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
    elif init_checkpoint is not None:
        _init_from_checkpoint(bundle, init_checkpoint, run_name)
    elif cfg.init_from:
        _init_from_detokenizer(bundle, cfg.init_from)
    disc, d_opt = None, None
    if cfg.uses_disc():  # its own checkpoint inside the U2S's (`step-N/disc`); a fresh one otherwise
        disc, d_opt = load_or_new_discriminator(cfg.disc_config(), cfg.disc_lr, ck / "disc" if ck else None)
    acc = fresh_accelerator(cfg.bf16)
    bundle, opt = acc.prepare(bundle, opt)
    data = U2SData(cfg.cache_dir, cfg.voices, cfg.augment_tags())
    judge, phones = None, None
    if cfg.w_content > 0:
        judge, phones = load_judge(cfg), item_phones(data, cfg.corpus)
    cols = (("total", "mel", "dur", "f0", "vuv", "prosody", "labels") + (("content",) if judge is not None else ())
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
            for g in opt.param_groups:
                g["lr"] = lr
            with acc.autocast():
                losses = u2s_losses(acc.unwrap_model(bundle), batch, cfg, judge, disc,
                                    torch.Generator().manual_seed(cfg.seed * 7919 + step + 1),
                                    adversarial=step >= cfg.adv_warmup)
            opt.zero_grad(set_to_none=True)
            acc.backward(losses["total"])
            torch.nn.utils.clip_grad_norm_(bundle.parameters(), 1.0)
            opt.step()
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


def _u2s_stage_checkpoint(cfg: U2STrainConfig) -> Path:
    stage = "u2s_finetune" if cfg.finetune else "u2s"
    ck = latest_checkpoint(Path(cfg.out_dir) / stage)
    if ck is None:
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
    refiner_from = None
    refiner = None
    if cfg.refiner is not None:
        from emova.train.u2s_refiner import load_trained_refiner

        refiner, refiner_from = load_trained_refiner(cfg, ck)
    detok = SpeechDetokenizer(bundle.u2s, bundle.style_encoder, voc, protos, refiner=refiner)
    for k, v in calibrate_rendered_prosody(detok, data).items():
        setattr(bundle.u2s.cfg, k, v)
    if cfg.condition_prosody:
        protos.prosody = calibrate_condition_prosody(detok, data, pitch_factors=cfg.pitch_factors)
    info = {"u2s_checkpoint": str(ck), "vocoder_checkpoint": vocoder_from, "refiner_checkpoint": refiner_from, "trained_on": cfg.corpus,
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
        for aug in cfg.augmentations():
            augment_cache(cfg.cache_dir, cfg.corpus, aug, cfg.vocoder_config(), workers=cfg.workers, progress=progress)
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
