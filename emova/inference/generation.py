"""KV-cached token generation for batch size 1, with optional speculative drafts.

A plain loop over the model's forward with a KV cache: the prompt (and its images) once, then one
token per step. It is a generator, so callers (the streaming path) see every token as it is made.
Where the language model allows it (`emova.inference.fast_decode.lean_unsupported`), the forward is the
lean decoder (the same arithmetic without the modules' Python overhead: ~1.4x less time per step at
emova-tiny's size); `settings.lean = False`, or any other architecture, uses the model's transformers forward
and cache (`settings.cache`).

With `settings.draft` (a callable: tokens generated so far → proposed next tokens, e.g.
`emova.inference.drafting.AnswerDrafter`), a step feeds the new token *and* the proposal in one forward
pass and keeps the longest prefix of the proposal the model accepts: greedily, the tokens it would have
picked anyway (so the output is the same); when sampling, each proposed token d is kept with
probability p(d) and otherwise replaced by a sample from p without d — the speculative-sampling rule
for a deterministic draft, which leaves the distribution of the output unchanged. Rejected positions
are cropped from the cache.

With `settings.draft_is_constraint`, the draft is not a proposal but a constraint: its tokens are emitted
as they are, unchecked (structured output, like a JSON-schema mode). With `AnswerDrafter` this forces the
answer's skeleton (keys in order, separators, closing brace) wherever a value has just closed, so the
model writes only the values. Greedy output changes where the model would have left the format (and, rarely,
where it would have split the same skeleton characters into other tokens than the canonical ones).

With `settings.hold_stop` (tokens so far → bool, e.g. `emova.inference.drafting.AnswerGuard`), the stop
ids are masked out wherever it says the answer is not finished — a structural constraint like a JSON
mode: a spoken answer cannot end before its reply. Greedy picks change only where the model's own first
choice was a stop id; sampling draws from the distribution restricted to the other tokens.

With `settings.allow` (tokens so far → the only ids that may come next, or None), the others are masked the
same way (`AnswerDrafter.allowed`: the first token of each emotion/pitch label where a label value opens).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import DynamicCache, StaticCache


@dataclass
class GenerationSettings:
    """Decoding settings. temperature 0 = greedy (the default: deterministic)."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    cache: str = "static"  # "static": preallocated (prompt + max_new_tokens), no per-step concatenation
    draft: Callable[[list[int]], list[int]] | None = None  # proposes next tokens (speculative decoding)
    draft_is_constraint: bool = False  # True: the draft's tokens are emitted unchecked (structured output)
    hold_stop: Callable[[list[int]], bool] | None = None  # True: the output may not end here (stop ids masked)
    allow: Callable[[list[int]], Sequence[int] | None] | None = None  # the only ids that may come next (None: any)
    lean: bool = True  # decode with emova.inference.fast_decode.LeanDecoder where the model allows it exactly
    #: called once when generation starts: the tokens the output begins with, emitted unchecked and read with the
    #: prompt in one prefill (e.g. the spoken answer's opening with a transcript chosen beforehand,
    #: `emova.inference.rescoring.transcript_candidates`); they count towards max_new_tokens
    prefix: Callable[[], Sequence[int]] | None = None

    def __post_init__(self) -> None:
        if self.cache not in ("static", "dynamic"):
            raise ValueError(f"cache must be 'static' or 'dynamic', got {self.cache!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


def _probs(logits: torch.Tensor, s: GenerationSettings) -> torch.Tensor:
    """The sampling distribution (temperature, then nucleus) for logits (V,); temperature > 0."""
    probs = torch.softmax(logits.float() / s.temperature, dim=-1)
    if s.top_p < 1:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < s.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter_(0, idx[keep], sorted_p[keep])
    return probs


def _pick(logits: torch.Tensor, s: GenerationSettings, gen: torch.Generator | None) -> int:
    """logits (V,) → next token id."""
    if s.temperature == 0:
        return int(logits.argmax())
    return int(torch.multinomial(_probs(logits, s), 1, generator=gen))


def _verify(logits: torch.Tensor, proposed: int, s: GenerationSettings, gen: torch.Generator | None) -> int:
    """The token to emit where `proposed` was drafted: `proposed` itself if accepted, else a replacement."""
    if s.temperature == 0:
        return int(logits.argmax())
    probs = _probs(logits, s)
    p = float(probs[proposed])
    if float(torch.rand((), generator=gen, device=probs.device)) < p:
        return proposed
    if p >= 1.0:  # numerically certain: nothing else to sample
        return proposed
    probs[proposed] = 0.0
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def _held(logits: torch.Tensor, produced: list[int], s: GenerationSettings, stop_ids: set[int]) -> torch.Tensor:
    """logits (V,) with the stop ids masked where `s.hold_stop(produced)` says the output may not end."""
    if s.hold_stop is None or not stop_ids:
        return logits
    if s.temperature == 0 and int(logits.argmax()) not in stop_ids:
        return logits  # masking cannot change a greedy pick that is no stop id (and the check costs a decode)
    if not s.hold_stop(produced):
        return logits
    masked = logits.clone()
    masked[sorted(stop_ids)] = float("-inf")
    return masked


def _shaped(logits: torch.Tensor, produced: list[int], s: GenerationSettings, stop_ids: set[int]) -> torch.Tensor:
    """logits (V,) under the settings' rules: stop ids held (`_held`), and only `s.allow(produced)` left when
    it names the ids that may come next."""
    logits = _held(logits, produced, s, stop_ids)
    if s.allow is None:
        return logits
    allowed = s.allow(produced)
    if not allowed:
        return logits
    if s.temperature == 0 and int(logits.argmax()) in allowed:
        return logits  # the greedy pick is allowed already
    masked = torch.full_like(logits, float("-inf"))
    idx = torch.tensor(list(allowed), device=logits.device)
    masked[idx] = logits[idx]
    return masked


def _usable(draft: list[int], room: int, stop_ids: set[int]) -> list[int]:
    """The proposal cut to the token budget (one token always follows it) and before any stop id."""
    out = []
    for t in draft[: max(0, room)]:
        if t in stop_ids or not isinstance(t, int):
            break
        out.append(t)
    return out


class _TransformersRunner:
    """The model's own forward with a transformers KV cache."""

    def __init__(self, model: Any, inputs: dict[str, torch.Tensor], settings: GenerationSettings) -> None:
        self.model, self.inputs = model, inputs
        n = inputs["input_ids"].shape[1] + settings.max_new_tokens
        text_config = model.config.get_text_config()
        self.cache = (StaticCache(config=text_config, max_cache_len=n) if settings.cache == "static"
                      else DynamicCache(config=text_config))

    def prefill(self) -> torch.Tensor:
        return self.model(**self.inputs, cache=self.cache, use_cache=True, logits_to_keep=1).logits[0, -1]

    def step(self, ids: list[int]) -> torch.Tensor:
        step = torch.tensor([ids], device=self.inputs["input_ids"].device)
        return self.model(input_ids=step, cache=self.cache, use_cache=True, logits_to_keep=len(ids)).logits[0]

    def crop(self, n: int) -> None:
        self.cache.crop(-n)


class _LeanRunner:
    """`emova.inference.fast_decode.LeanDecoder`: the same arithmetic without the transformers modules."""

    def __init__(self, model: Any, inputs: dict[str, torch.Tensor], settings: GenerationSettings) -> None:
        from emova.inference.fast_decode import LeanDecoder

        self.model, self.inputs = model, inputs
        self.decoder = LeanDecoder(model, inputs["input_ids"].shape[1] + settings.max_new_tokens)

    def prefill(self) -> torch.Tensor:
        ids = self.inputs["input_ids"]
        embed = getattr(self.model, "embed_inputs", None)
        if embed is not None:
            embeds = embed(ids, self.inputs.get("pixel_values"), self.inputs.get("image_grid_thw"))
        else:
            embeds = self.model.get_input_embeddings()(ids)
        return self.decoder.prefill(embeds[0])[-1]

    def step(self, ids: list[int]) -> torch.Tensor:
        return self.decoder.step(ids)

    def crop(self, n: int) -> None:
        self.decoder.crop(n)


def _runner(model: Any, inputs: dict[str, torch.Tensor], settings: GenerationSettings) -> Any:
    if settings.lean:
        from emova.inference.fast_decode import lean_unsupported

        if lean_unsupported(model) is None:
            return _LeanRunner(model, inputs, settings)
    return _TransformersRunner(model, inputs, settings)


def context_length(model: Any) -> int | None:
    """The most positions `model`'s LLM reads (its `max_position_embeddings`), prompt and answer together."""
    n = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return int(n) if n else None


@torch.inference_mode()
def generate_tokens(
    model: Any, inputs: dict[str, torch.Tensor], stop_ids: set[int], settings: GenerationSettings
) -> Iterator[int]:
    """Yield new token ids until a stop id (not yielded) or max_new_tokens. `inputs`: the processor's
    output for ONE conversation (input_ids (1, T) [, pixel_values, image_grid_thw])."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    prompt: dict[str, torch.Tensor] = {"input_ids": inputs["input_ids"].to(device)}
    if "pixel_values" in inputs:
        prompt["pixel_values"] = inputs["pixel_values"].to(device, dtype)
        prompt["image_grid_thw"] = inputs["image_grid_thw"].to(device)
    gen = None
    if settings.seed is not None:
        gen = torch.Generator(device=device).manual_seed(settings.seed)
    limit = context_length(model)
    room = None if limit is None else limit - int(prompt["input_ids"].shape[1])
    if room is not None and room < 1:
        raise ValueError(f"the prompt is {prompt['input_ids'].shape[1]} tokens; the model reads at most {limit}")
    if room is not None and settings.max_new_tokens > room:  # the answer stops where the model's context ends
        settings = replace(settings, max_new_tokens=room)
    produced: list[int] = [int(t) for t in settings.prefix()] if settings.prefix is not None else []
    if set(produced) & stop_ids:
        raise ValueError("a generation prefix may not contain a stop id")
    if len(produced) >= settings.max_new_tokens:
        yield from produced[: settings.max_new_tokens]
        return
    if produced:
        if room is not None and len(produced) >= room:
            raise ValueError(f"the prompt and its {len(produced)}-token prefix exceed the model's {limit} positions")
        prompt["input_ids"] = torch.cat([prompt["input_ids"], torch.tensor([produced], device=device)], 1)
    runner = _runner(model, prompt, settings)
    logits, forced = runner.prefill(), None
    yield from produced
    if settings.draft is not None and settings.draft_is_constraint:  # a constraint may fix the very first tokens
        first = _usable(settings.draft(produced), settings.max_new_tokens, stop_ids)
        forced = first[0] if first else None
    while True:
        token = _pick(_shaped(logits, produced, settings, stop_ids), settings, gen) if forced is None else forced
        if token in stop_ids:
            return
        produced.append(token)
        yield token
        room = settings.max_new_tokens - len(produced)
        if room <= 0:
            return
        draft = _usable(settings.draft(produced) if settings.draft else [], room - 1, stop_ids)
        step_logits = runner.step([token, *draft])  # (1 + len(draft), V)
        logits, forced = step_logits[-1], None
        for i, d in enumerate(draft):
            if settings.draft_is_constraint:
                produced.append(d)
                yield d
                continue
            got = _verify(_shaped(step_logits[i], produced, settings, stop_ids), d, settings, gen)
            if got != d:  # rejected: drop the cache entries of draft[i:], emit the replacement next
                runner.crop(len(draft) - i)
                forced = got
                break
            produced.append(d)
            yield d


__all__ = ["GenerationSettings", "context_length", "generate_tokens"]
