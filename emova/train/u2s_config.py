"""`U2STrainConfig`: every setting of `emova train u2s` (the stages live in `emova.train.u2s`), validated
on construction; `U2STrainConfig.load` reads a YAML file (`emova/configs/u2s_tiny.yaml`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from emova.data.speech.voices import PITCH_FACTOR
from emova.speech.refiner import MelRefinerConfig
from emova.speech.style_encoder import StyleEncoderConfig
from emova.speech.u2s import U2SConfig
from emova.speech.vocoder import VocoderConfig
from emova.train.u2s_adversarial import MelDiscriminatorConfig
from emova.train.u2s_augment import F0Augment
from emova.train.u2s_content import PhoneJudgeConfig
from emova.train.u2s_cross_voice import CrossVoice
from emova.yaml_io import load_dataclass_config

FINETUNE_KEYS = {"voices", "max_minutes", "max_steps", "lr", "warmup_steps", "model", "w_content", "w_delta", "unit_noise",
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
    # temporal-change loss: L1 between the predicted and the real mel's frame-to-frame differences (weighted as
    # the mel loss), against the smeared transitions an L1 regression draws; 0 = off
    w_delta: float = 0.0
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
    # cross-voice inputs (`emova.train.u2s_cross_voice.CrossVoice`): the units of another training voice saying
    # the group's sentence, paired with the group's renderings; made by the prepare stage, read by the u2s and
    # finetune stages only, e.g. [{source_voices: ["*"], share: 1.0}]; [] = none
    cross_voice: list[dict] = field(default_factory=list)
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
    # export: the detokenizer's default emotion strength (StylePrototypes.vector; set after the calibrations,
    # which measure the table itself). 1: the corpus average of each emotion.
    emotion_strength: float = 1.0
    # the F0 ratio of each pitch label to normal that the corpus was rendered with (emova.data.speech.voices);
    # the condition table keeps the labels this far apart. None: follow the renderings as they came out.
    pitch_factors: dict[str, float] | None = field(default_factory=lambda: dict(PITCH_FACTOR))

    def __post_init__(self) -> None:
        from emova.speech.style_encoder import check_emotion_strength

        check_emotion_strength(self.emotion_strength)
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
        for k in ("w_content", "w_delta", "w_adv", "w_fm"):
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
        if not isinstance(self.cross_voice, list):
            raise ValueError(f"U2STrainConfig.cross_voice must be a list of mappings, got {self.cross_voice!r}")
        self.cross_voices()
        self.u2s_config()
        self.vocoder_config()
        StyleEncoderConfig.from_dict(self.style_encoder)

    @classmethod
    def load(cls, path: str | Path, **overrides) -> U2STrainConfig:
        return load_dataclass_config(cls, path, overrides)

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

    def cross_voices(self) -> list[CrossVoice]:
        return [CrossVoice.from_dict(c) for c in self.cross_voice]

    def cross_voice_tags(self) -> list[str]:
        """The cross-voice shards the u2s and finetune stages train on (not the vocoder, calibration or
        prototypes: their targets are the cached items themselves)."""
        return [c.tag for c in self.cross_voices()]

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
