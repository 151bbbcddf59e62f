"""`Emova`: the one object every CLI, server and UI calls.

    m = Emova.from_pretrained("emova-tiny")          # or our layout dir, or an official EMOVA model dir
    r = m.chat([{"role": "user", "content": [{"type": "image", "image": "shapes.png"},
                                             {"type": "audio", "audio": "question.wav"}]}])
    r.transcript, r.user_emotion, r.user_pitch, r.text, r.emotion, r.pitch, r.units, r.audio, r.raw

A user turn with audio is a spoken-dialogue turn: speech → S2U units (reduced) → the released
instruction (`chat_prompt`) → the model answers one JSON object (parsed by `json_repair`) → the reply
units are spoken by the U2S in the style of the reply's labels (gender from `voice`) unless
`style_override` says otherwise. A turn without audio is a text turn: the model answers text; that
text is then spoken through the TTS prompt (`speak=False` skips it).

Directory layouts `from_pretrained` accepts:
  ours       DIR/llm (EmovaForConditionalGeneration + tokenizer + emova_processor.json),
             DIR/speech_tokenizer, DIR/speech_detokenizer
  official   DIR = an EMOVA model directory (official-hf or official-train layout, with its tokenizer
             files) + the official speech tokenizer in DIR/speech_tokenizer or `speech_tokenizer=`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emova.assets import read_json_object, resolve_model_dir
from emova.audio import Audio
from emova.inference.drafting import AnswerDrafter, AnswerGuard
from emova.inference.generation import GenerationSettings, context_length, generate_tokens
from emova.inference.json_repair import parse_answer, units_in
from emova.inference.messages import Turn, check_messages, load_audio, load_image, resolve_style
from emova.inference.rescoring import (
    ASR_BEAMS,
    ASR_READER_WEIGHT,
    ASR_REFINE_ROUNDS,
    ASR_WORD_BONUS,
    READER_WEIGHT,
    REFINE_ALTERNATIVES,
    TRANSCRIPT_BEAMS,
    PhoneReader,
    Rescored,
    phonemizer_available,
    rescored_answer,
    transcript_prefix,
)
from emova.inference.speech_io import Detokenizer, UnitEncoder, load_speech_pair
from emova.model.processor import EmovaProcessor, build_image_processor
from emova.model.prompts import asr_prompt, chat_prompt, tts_prompt
from emova.speech.tokenizer import UNIT_RE
from emova.styles import Style

QWEN2VL_DEFAULT_PIXELS = (56 * 56, 28 * 28 * 1280)
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}



class GenerationError(RuntimeError):
    """The model produced nothing usable for the request (e.g. no speech units for `synthesize`)."""


class ContextLengthError(ValueError):
    """The conversation does not fit the LLM's context (`Emova.context_length` positions)."""


@dataclass
class ChatResult:
    """One assistant turn. Labels are None where the model gave none (text turns give none)."""

    transcript: str | None
    user_emotion: str | None
    user_pitch: str | None
    text: str
    emotion: str | None
    pitch: str | None
    units: list[int]
    audio: Audio | None
    raw: str
    style: Style | None = None  # the style the audio was rendered in
    mode: str = "spoken"  # "spoken" (audio in, JSON answer) or "text"
    repairs: list[str] = field(default_factory=list)  # what json_repair fixed in `raw`
    timings: dict[str, float] = field(default_factory=dict)
    #: tokens read and written: `prompt_tokens` (images and speech units included), `completion_tokens` (the
    #: answer; for a text turn that is spoken, plus the speech units of its TTS pass)
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def repaired(self) -> bool:
        return bool(self.repairs)

    def as_message(self) -> dict[str, Any]:
        """This turn as an assistant message for the next `chat` call (multi-turn history)."""
        return {"role": "assistant", "content": self.raw if self.mode == "spoken" and self.raw.strip() else self.text}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (audio summarised, not included)."""
        return {
            "transcript": self.transcript, "user_emotion": self.user_emotion, "user_pitch": self.user_pitch,
            "text": self.text, "emotion": self.emotion, "pitch": self.pitch, "units": self.units,
            "style": str(self.style) if self.style else None, "mode": self.mode, "repairs": self.repairs,
            "audio": None if self.audio is None else {"sample_rate": self.audio.sample_rate,
                                                      "seconds": round(self.audio.duration, 3)},
            "raw": self.raw, "timings": self.timings, "usage": self.usage,
        }  # fmt: skip


@dataclass
class ChatPlan:
    """A checked chat request, ready to generate."""

    inputs: dict[str, torch.Tensor]
    mode: str
    voice: str
    style_override: Any
    settings: GenerationSettings
    speak: bool
    started: float


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}; accepted: {', '.join(_DTYPES)} or a torch.dtype")
    return _DTYPES[dtype]


def usable_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device this process can compute on; a ValueError naming the device and why not
    (an unknown name, a torch built without that backend, no such GPU)."""
    try:
        dev = torch.device(device)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"device {str(device)!r} cannot be used here: {reason}") from None
    return dev


def _image_processor_for(model_dir: Path) -> Any:
    """Official directories: Qwen2-VL image settings from preprocessor_config.json or config.json."""
    settings: dict[str, int] = {}
    pre = model_dir / "preprocessor_config.json"
    if pre.is_file():
        data = read_json_object(pre)
        size = data.get("size") or {}
        settings["min_pixels"] = int(data.get("min_pixels", size.get("shortest_edge", QWEN2VL_DEFAULT_PIXELS[0])))
        settings["max_pixels"] = int(data.get("max_pixels", size.get("longest_edge", QWEN2VL_DEFAULT_PIXELS[1])))
        for k in ("patch_size", "merge_size", "temporal_patch_size"):
            if k in data:
                settings[k] = int(data[k])
    else:
        cfg = read_json_object(model_dir / "config.json")
        vision = cfg.get("vision_config") or cfg.get("mm_vision_tower") or {}
        settings["min_pixels"] = int(vision.get("min_pixels", QWEN2VL_DEFAULT_PIXELS[0]))
        settings["max_pixels"] = int(vision.get("max_pixels", QWEN2VL_DEFAULT_PIXELS[1]))
        for ours, theirs in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                             ("temporal_patch_size", "temporal_patch_size")):
            if theirs in vision:
                settings[ours] = int(vision[theirs])
    return build_image_processor(**settings)


class Emova:
    """EMOVA inference: chat (text, images, speech; multi-turn), transcribe, synthesize, answer."""

    def __init__(self, model: Any, processor: EmovaProcessor, speech_tokenizer: UnitEncoder,
                 detokenizer: Detokenizer, max_audio_seconds: float = 300.0) -> None:
        self.model = model.eval()
        self.processor = processor
        self.speech_tokenizer = speech_tokenizer
        self.detokenizer = detokenizer
        self.max_audio_seconds = max_audio_seconds
        tok = processor.tokenizer
        stops = {processor.im_end_id}
        for t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")):
            if isinstance(t, int) and t >= 0 and t != tok.unk_token_id:
                stops.add(t)
        self.stop_ids = stops
        self._speech_ids = set(processor.speech_token_ids)
        #: draft the answer's JSON skeleton and verify it in one pass (`emova.inference.drafting`);
        #: greedy output is identical either way, only faster with it
        self.speculative = True
        #: a spoken answer may not end before its JSON is complete (`drafting.AnswerGuard`): where the model
        #: would stop early (e.g. right after the transcript), it must go on; False gives the raw output
        self.hold_unfinished = True
        #: structured answers: wherever a value has just closed, the skeleton that must follow (the next key
        #: in order, or the closing brace) is written for the model, which writes only the values — keys
        #: are never skipped, repeated or reordered (`GenerationSettings.draft_is_constraint`), and emotion and
        #: pitch values are always labels of the format (`GenerationSettings.allow`); False: the skeleton is
        #: only proposed and verified, and the model may leave the format
        self.structured_answers = True
        #: token-by-token decoding with `emova.inference.fast_decode.LeanDecoder` where the LLM allows it (the
        #: same logits without the transformers modules' per-call overhead); False: the transformers forward
        self.lean_decoding = True
        #: user speech is cut to its sound (`Audio.trim_silence`) before the speech tokenizer reads it: the models
        #: learned from tightly cut clips, and a recording's second of silence or room noise would be heard as
        #: content (benchmarks/asr_padding_probe.py; docs/python_api.md, "Silence around user speech")
        self.trim_silence = True
        #: seconds of that silence kept before and after the sound (lead, trail); a side with at most 0.1 s more is
        #: left as it is (`Audio.trim_silence`'s tolerance)
        self.silence_margins = (0.2, 0.2)
        #: and pauses inside it longer than this (+ 0.1 s) are cut down to it (`Audio.shorten_pauses`); None: kept
        self.max_pause_s: float | None = 0.05
        #: `transcribe` asks the LLM for this many transcripts (beam search), then searches on from the best one for
        #: `asr_refine_rounds` rounds (branching at each of its tokens to the LLM's `refine_alternatives` next most
        #: likely ones), and keeps the candidate with the best LLM log-likelihood + `asr_reader_weight` × the speech
        #: tokenizer's phone reader's (how likely its phones are in the units; its unit reader, else the S2U's CTC
        #: side) + `asr_word_bonus` per word
        #: (`emova.inference.rescoring`); 1 beam: the greedy transcript. A speech tokenizer without a phone reader, or
        #: no espeak-ng, also gives the greedy one
        self.asr_beams = ASR_BEAMS
        self.asr_refine_rounds = ASR_REFINE_ROUNDS
        self.refine_alternatives = REFINE_ALTERNATIVES
        self.asr_reader_weight = ASR_READER_WEIGHT
        self.asr_word_bonus = ASR_WORD_BONUS
        #: a spoken answer begins with the user's words (its "user question text"): the LLM's `transcript_beams`
        #: best transcripts there (beam search) are rescored by LLM + `transcript_reader_weight` × reader and the best
        #: is written for it, before it goes on with the labels and the reply, which then follow what was said; 1:
        #: its own greedy transcript. `transcript_refine_rounds` > 0 refines them as `transcribe` does (not by
        #: default: measured on `transcribe` only)
        self.transcript_beams = TRANSCRIPT_BEAMS
        self.transcript_reader_weight = READER_WEIGHT
        self.transcript_refine_rounds = 0

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | Path = "emova-tiny",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        speech_tokenizer: str | Path | None = None,
        speech_detokenizer: str | Path | None = None,
        max_audio_seconds: float = 300.0,
    ) -> Emova:
        """Bundled name or local directory, our layout or an official one (see the module docstring)."""
        from emova.convert.model import detect_layout, load_emova_model

        root = resolve_model_dir(name_or_dir)
        dev = usable_device(device)
        dt = _as_dtype(dtype)
        if dt is None and dev.type == "cpu":
            dt = torch.float32  # checkpoints are stored in fp16; CPUs without native fp16 run it several times slower
        if (root / "llm").is_dir():
            llm_dir = root / "llm"
            st_dir = Path(speech_tokenizer) if speech_tokenizer else root / "speech_tokenizer"
            sd_dir = Path(speech_detokenizer) if speech_detokenizer else root / "speech_detokenizer"
            if not sd_dir.is_dir() and speech_detokenizer is None:
                sd_dir = st_dir  # an official speech tokenizer decodes too
        elif (root / "config.json").is_file():
            llm_dir = root
            detect_layout(root)  # ValueError naming what is wrong when this is no EMOVA checkpoint
            st_dir = Path(speech_tokenizer) if speech_tokenizer else root / "speech_tokenizer"
            sd_dir = Path(speech_detokenizer) if speech_detokenizer else st_dir
        else:
            raise ValueError(f"{root}: not an emova model directory; expected llm/ + speech_tokenizer/ + "
                             f"speech_detokenizer/ (our layout) or an EMOVA checkpoint with config.json")
        for what, d in (("speech tokenizer", st_dir), ("speech detokenizer", sd_dir)):
            if not d.is_dir():
                raise ValueError(f"no {what} at {d}; put it there or pass speech_tokenizer=DIR "
                                 f"(the official one: Emova-ollm/emova_speech_tokenizer_hf)")
        if not (llm_dir / "tokenizer_config.json").is_file() and not (llm_dir / "tokenizer.json").is_file():
            raise ValueError(f"{llm_dir}: no tokenizer files (tokenizer.json / tokenizer_config.json); "
                             f"copy the released model's tokenizer files next to its config.json")
        model = load_emova_model(llm_dir, dtype=dt).to(dev)
        processor = EmovaProcessor.from_pretrained(llm_dir)
        if processor.image_processor is None:
            processor.image_processor = _image_processor_for(llm_dir)
        encoder, detok = load_speech_pair(st_dir, sd_dir, device=str(dev), max_seconds=max_audio_seconds)
        return cls(model, processor, encoder, detok, max_audio_seconds=max_audio_seconds)

    # ----------------------------------------------------------------------------------- plumbing
    def _tokens(self, inputs: dict[str, torch.Tensor], settings: GenerationSettings) -> Iterator[int]:
        """The token source (KV-cached). Tests replace it to force-feed known outputs."""
        return generate_tokens(self.model, inputs, self.stop_ids, settings)

    def _user_units(self, audio: Audio) -> list[int]:
        """Raw 25 Hz units of a user's clip (cut to its sound first, as set); ValueError when there are none."""
        if self.trim_silence:
            margins = self.silence_margins
            if (not isinstance(margins, (tuple, list)) or len(margins) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 5 for v in margins)):
                raise ValueError(f"Emova.silence_margins must be (lead, trail) seconds in [0, 5], got {margins!r}")
            audio = audio.trim_silence(*margins)
            pause = self.max_pause_s
            if pause is not None:
                if isinstance(pause, bool) or not isinstance(pause, (int, float)) or not 0.02 <= pause <= 5:
                    raise ValueError(f"Emova.max_pause_s must be None or seconds in [0.02, 5], got {pause!r}")
                audio = audio.shorten_pauses(pause)
        units = self.speech_tokenizer.encode(audio)
        if not units:
            raise ValueError("the speech tokenizer returned no units for this audio (too short?)")
        return units

    def _render_turns(self, turns: list[Turn]) -> tuple[list[dict[str, Any]], list[Any], list[int]]:
        """Messages for the processor, their images, and the raw units of the last turn's audio ([] if none)."""
        messages, images, units = [], [], []
        for t in turns:
            text = "\n".join(s.strip() for s in t.texts)
            units = []
            if t.audios:
                units = self._user_units(t.audios[0])
                text = (text + "\n" if text else "") + chat_prompt(self.processor.units_to_string(units))
            images.extend(t.images)
            messages.append({"role": t.role, "content": text})
        return messages, images, units

    def _transcript_prefix(self, inputs: dict[str, torch.Tensor], units: list[int]) -> list[int]:
        """The spoken answer's opening with the best-rescored of the LLM's transcripts, through the quote that
        opens the next key (`transcript_beams`); [] when no candidate came out."""
        return transcript_prefix(self.model, inputs, self.processor.tokenizer,
                                 self.speech_tokenizer.phone_log_probs(units), self.transcript_beams,
                                 self.transcript_reader_weight, sorted(self.stop_ids),
                                 rounds=self.transcript_refine_rounds, alternatives=self.refine_alternatives)

    @property
    def context_length(self) -> int | None:
        """The most positions the LLM reads (its `max_position_embeddings`), prompt and answer together."""
        return context_length(self.model)

    def _encode(self, messages: list[dict[str, Any]], images: list[Any] | None = None) -> dict[str, torch.Tensor]:
        inputs = self.processor(messages, images=images or None, add_generation_prompt=True)
        inputs.pop("labels", None)
        n, limit = int(inputs["input_ids"].shape[1]), self.context_length
        if limit is not None and n >= limit:  # caught here, before a prefill of that size is even tried
            raise ContextLengthError(f"the conversation is {n} tokens long (images and speech included); this model "
                                     f"reads at most {limit} positions, prompt and answer together: shorten it")
        return inputs

    def _decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids, skip_special_tokens=True)

    def _plain_text(self, ids: list[int]) -> str:
        """A text answer: decoded, without any speech-unit tokens, stripped."""
        return UNIT_RE.sub("", self._decode(ids)).strip()

    def _settings(self, max_new_tokens: int | None, default: int, **kw: Any) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=default if max_new_tokens is None else max_new_tokens,
                                  lean=self.lean_decoding, **kw)

    def tts_units(self, text: str, settings: GenerationSettings) -> Iterator[int]:
        """Speech units for `text` via the TTS prompt, yielded as they are generated."""
        inputs = self._encode([{"role": "user", "content": tts_prompt(text)}])
        for tok in self._tokens(inputs, settings):
            if tok in self._speech_ids:
                yield self.processor.ids_to_units([tok])[0]

    # --------------------------------------------------------------------------------------- chat
    def prepare_chat(self, messages: Any, voice: str = "female", style_override: Any = None,
                     max_new_tokens: int | None = None, speak: bool = True, temperature: float = 0.0,
                     seed: int | None = None) -> ChatPlan:
        """Check everything (messages, voice, style) and build the model inputs; raises ValueError."""
        started = time.perf_counter()
        resolve_style(voice, None, None, style_override)  # fail before any generation
        turns = check_messages(messages, self.max_audio_seconds)
        mode = "spoken" if turns[-1].audios else "text"
        spoken = mode == "spoken"
        draft = AnswerDrafter(self.processor) if spoken and (self.speculative or self.structured_answers) else None
        hold = AnswerGuard(self.processor) if spoken and self.hold_unfinished else None
        structured = spoken and self.structured_answers
        settings = self._settings(max_new_tokens, 1024, temperature=temperature, seed=seed, draft=draft,
                                  hold_stop=hold, draft_is_constraint=structured,
                                  allow=draft.allowed if structured and draft is not None else None)
        rendered, images, units = self._render_turns(turns)
        inputs = self._encode(rendered, images)
        beams = _beam_count("Emova.transcript_beams", self.transcript_beams)
        if spoken and beams > 1 and self.can_rescore:  # chosen when generation starts (under the model's lock)
            settings = replace(settings, prefix=partial(self._transcript_prefix, inputs, units))
        return ChatPlan(inputs, mode, voice, style_override, settings, speak, started)

    def chat(self, messages: Any, voice: str = "female", style_override: Style | dict[str, Any] | str | None = None,
             stream: bool = False, max_new_tokens: int | None = None, speak: bool = True,
             temperature: float = 0.0, seed: int | None = None) -> ChatResult | Iterator[Any]:
        """One assistant turn for `messages` (SPEC.md shape; the last message is the user's).
        stream=True returns an iterator of `TextDelta`, `AudioChunk`, then one `Final` event."""
        plan = self.prepare_chat(messages, voice, style_override, max_new_tokens, speak, temperature, seed)
        if stream:
            from emova.inference.streaming import stream_chat

            return stream_chat(self, plan)
        ids = list(self._tokens(plan.inputs, plan.settings))
        t_gen = time.perf_counter()
        result = self.finish(plan, self._decode(ids), n_generated=len(ids))
        if plan.speak and result.units:
            result.audio = self.detokenizer.decode(result.units, style=result.style)
        result.timings.update(generate_s=t_gen - plan.started, total_s=time.perf_counter() - plan.started)
        return result

    def finish(self, plan: ChatPlan, raw: str, units: list[int] | None = None, n_generated: int = 0) -> ChatResult:
        """Turn the raw answer (`n_generated` tokens) into a ChatResult (no audio yet). Text turns get their TTS
        units here unless `units` are given."""
        usage = {"prompt_tokens": int(plan.inputs["input_ids"].shape[-1]), "completion_tokens": n_generated}
        if plan.mode == "spoken":
            p = parse_answer(raw)
            style = resolve_style(plan.voice, p.emotion, p.pitch, plan.style_override)
            return ChatResult(p.transcript, p.user_emotion, p.user_pitch, p.text or "", p.emotion, p.pitch,
                              p.units if units is None else units, None, raw, style, "spoken", p.repairs,
                              usage=usage)
        found, _ = units_in(raw)
        text = raw.replace("<image>", "")
        repairs = []
        if found:
            text = UNIT_RE.sub("", text)
            repairs.append(f"removed {len(found)} speech unit(s) from the text reply")
        text = text.strip()
        style = resolve_style(plan.voice, None, None, plan.style_override)
        if units is None:
            units = list(self.tts_units(text, plan.settings)) if plan.speak and text else []
            usage["completion_tokens"] += len(units)
        return ChatResult(None, None, None, text, None, None, units, None, raw, style, "text", repairs, usage=usage)

    # ------------------------------------------------------------------------------- single tasks
    def transcribe(self, audio: str | Path | Audio, max_new_tokens: int = 256, beams: int | None = None) -> str:
        """Speech → text with the ASR prompt: the best of the LLM's `beams` transcripts by the speech tokenizer's
        phone reader (`asr_beams` when None; see `transcribe_candidates`), or its greedy one where that is 1."""
        return self.transcribe_candidates(audio, max_new_tokens, beams).text

    def transcribe_candidates(self, audio: str | Path | Audio, max_new_tokens: int = 256,
                              beams: int | None = None) -> Rescored:
        """`transcribe` with what chose the transcript: every candidate, the LLM's and the reader's log-likelihoods
        (empty lists for the greedy path) and the chosen index."""
        beams = _beam_count("beams", self.asr_beams if beams is None else beams)
        a = load_audio(audio, "audio", self.max_audio_seconds)
        units = self._user_units(a)
        inputs = self._encode([{"role": "user", "content": asr_prompt(self.processor.units_to_string(units))}])
        if beams > 1 and self.can_rescore:
            r = rescored_answer(self.model, inputs, self.speech_tokenizer.phone_log_probs(units), beams,
                                self.asr_reader_weight, max_new_tokens, sorted(self.stop_ids),
                                self.processor.tokenizer.pad_token_id, self.processor.im_end_id, self._plain_text,
                                self.processor.tokenizer, self.asr_refine_rounds, self.refine_alternatives,
                                self.asr_word_bonus)
            if r is not None:
                return r
        text = self._plain_text(list(self._tokens(inputs, self._settings(max_new_tokens, 256))))
        return Rescored(text, [text], [], [], 0)

    @property
    def can_rescore(self) -> bool:
        """Whether `transcribe` and spoken turns can rescore transcripts: a speech tokenizer with a phone reader, and
        espeak-ng for the phones."""
        return isinstance(self.speech_tokenizer, PhoneReader) and phonemizer_available()

    def synthesize(self, text: str, style: Style | str = Style(), max_new_tokens: int = 1024,
                   reference: Audio | None = None, rate: float = 1.0) -> Audio:
        """Text → speech units (TTS prompt) → U2S in `style`. `rate` (0.25–4, OpenAI's `speed`) then plays the
        speech that many times faster, pitch kept (Praat PSOLA), on top of the style's own speed label."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text to synthesize is empty")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.25 <= rate <= 4.0:
            raise ValueError(f"rate must be a number in [0.25, 4], got {rate!r}")
        style = Style.parse(style)
        units = list(self.tts_units(text.strip(), self._settings(max_new_tokens, 1024)))
        if not units:
            raise GenerationError("the model generated no speech units for this text")
        audio = self.detokenizer.decode(units, style=style, reference=reference)
        return audio if rate == 1.0 else retime(audio, rate)

    def answer(self, image: Any, question: str, max_new_tokens: int = 256) -> str:
        """A typed question about an image → the text answer."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question is empty")
        img = load_image(image, "image")
        inputs = self._encode([{"role": "user", "content": question.strip()}], [img])
        return self._plain_text(list(self._tokens(inputs, self._settings(max_new_tokens, 256))))


def _beam_count(name: str, value: Any) -> int:
    """A beam count (1–32) or ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
        raise ValueError(f"{name} must be an integer in [1, 32], got {value!r}")
    return value


def retime(audio: Audio, rate: float) -> Audio:
    """`audio` played `rate` times faster with its pitch kept (Praat PSOLA; seeded, so the same call gives the same
    samples)."""
    from emova.data.speech.wave_augment import change_speed, change_tempo
    from emova.train.u2s_augment import praat_seeded

    if audio.duration < 0.06:  # too short for Praat's pitch analysis (3 periods of 60 Hz): plain resampling
        return Audio(change_speed(audio.samples, rate), audio.sample_rate)
    with praat_seeded(0):
        return Audio(change_tempo(audio.samples, audio.sample_rate, 1.0 / rate), audio.sample_rate)


def concat_audio(chunks: list[Audio]) -> Audio | None:
    if not chunks:
        return None
    return Audio(np.concatenate([c.samples for c in chunks]), chunks[0].sample_rate)


__all__ = ["ChatPlan", "ChatResult", "ContextLengthError", "Emova", "GenerationError", "concat_audio"]
