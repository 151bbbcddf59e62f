"""Choosing the transcript: the LLM's candidates, rescored with the speech tokenizer's phone reader, and refined.

The LLM is the recogniser: its answer to the ASR prompt is the transcript. Its first (greedy) choice is often not
its best one, and the speech tokenizer carries a second opinion: its phone reader reads phones from the units
alone (`SpeechTokenizer.phone_log_probs`: the unit reader trained on its units, `emova.speech.reader`, or the S2U's
own CTC side for a tokenizer without one). So `transcribe` asks the LLM for its `beams`
best transcripts (beam search), scores each one by

    log P_LLM(transcript | prompt)  +  weight · log P_CTC(phones(transcript) | units)  +  bonus · words

(the phones are espeak-ng's transcription of the text, the phone set the S2U was trained on), then searches on from
the best one (`refine`: at each of its tokens, the LLM's next most likely other tokens, each followed greedily to the
end, `branch_candidates`) and returns the best of all. A spoken chat turn rescores the beams of the "user question
text" its JSON answer opens with the same way (`transcript_prefix`, our beam search over one shared prefill; not
refined by default) and writes the winner for the model (`GenerationSettings.prefix`). Every candidate is one the
LLM wrote; the reader only chooses among them. Measured on the held-out world (docs/training.md, "Rescoring with the
phone reader", "Refining the transcript" and "A reader trained for the job"): ASR WER 0.488 → 0.245 (16 beams) →
0.202 (refined) → 0.144 (the unit reader), FSDD digits 0.877 → 0.907 → 0.913, spoken-turn transcripts 0.265 → 0.142
(8 beams) → 0.126 (the unit reader).

A speech tokenizer without a phone reader (the official one), or a machine without espeak-ng, gives the plain
greedy transcript.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from emova.data.speech.phones import phonemizer_available, phones_to_ids, text_to_phones
from emova.speech.tokenizer import UNIT_RE

#: the pipeline's defaults, which `emova eval omni` scores too. `transcribe` (`Emova.asr_*`): 16 beams, then
#: `ASR_REFINE_ROUNDS` rounds of branching from the best candidate to the LLM's `REFINE_ALTERNATIVES` next most likely
#: tokens at each of its positions (`refine`), chosen by `llm + ASR_READER_WEIGHT · reader + ASR_WORD_BONUS · words`
#: (weight and bonus chosen on a validation world for the speech tokenizer's unit reader, docs/training.md, "A reader
#: trained for the job"; 0.5 and 4 were chosen for the S2U's CTC side, "Refining the transcript"). A spoken turn's
#: transcript (`Emova.transcript_*`): 8 beams by `llm + READER_WEIGHT · reader`, not refined (16 beams gave no better
#: transcripts or answers there)
ASR_BEAMS = 16
ASR_READER_WEIGHT = 1.0
ASR_WORD_BONUS = 2.0
ASR_REFINE_ROUNDS = 2
REFINE_ALTERNATIVES = 6
TRANSCRIPT_BEAMS = 8
READER_WEIGHT = 1.0


@runtime_checkable
class PhoneReader(Protocol):
    def phone_log_probs(self, units: list[int]) -> torch.Tensor:
        """(T, n_phones) log-probabilities, index 0 the CTC blank."""
        ...


def phone_log_likelihood(log_probs: torch.Tensor, text: str) -> float:
    """log P(phones of `text` | units) under a CTC reader's (T, n_phones) log-probabilities; -inf for a text
    without phones, or with more than T units can spell."""
    if not text.strip():
        return -math.inf
    ids = phones_to_ids(text_to_phones(text))
    if not ids:
        return -math.inf
    loss = F.ctc_loss(log_probs[:, None].float(), torch.tensor([ids]), torch.tensor([log_probs.shape[0]]),
                      torch.tensor([len(ids)]), blank=0, reduction="sum")
    return -float(loss) if torch.isfinite(loss) else -math.inf


@torch.inference_mode()
def beam_candidates(model: Any, inputs: dict[str, torch.Tensor], beams: int, max_new_tokens: int,
                    stop_ids: Sequence[int], pad_id: int) -> list[list[int]]:
    """The `beams` best continuations of one prompt by beam search (transformers' `generate`), each cut at its
    first stop id; duplicates dropped, best first."""
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError("beam_candidates takes one prompt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=beams,
                         num_return_sequences=beams, eos_token_id=list(stop_ids), pad_token_id=pad_id,
                         use_cache=True)
    stops = set(stop_ids)
    cands: list[list[int]] = []
    for row in out[:, inputs["input_ids"].shape[1]:].tolist():
        row = row[: next((k for k, t in enumerate(row) if t in stops), len(row))]
        if row not in cands:
            cands.append(row)
    return cands


@torch.inference_mode()
def continuation_log_likelihoods(model: Any, inputs: dict[str, torch.Tensor], continuations: Sequence[list[int]],
                                 stop_id: int) -> list[float]:
    """sum log P(continuation, then `stop_id` | prompt) for each continuation, in one batched forward pass.
    Text and speech prompts only (no images)."""
    if any(k in inputs for k in ("pixel_values", "image_grid_thw")):
        raise ValueError("continuation_log_likelihoods takes prompts without images")
    prompt = inputs["input_ids"][0]
    seqs = [torch.tensor(c + [stop_id], dtype=prompt.dtype) for c in continuations]
    width = len(prompt) + max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=prompt.dtype)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(prompt) + len(s)
        ids[i, :n] = torch.cat([prompt, s])
        mask[i, :n] = 1
    logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    scores = []
    for i, s in enumerate(seqs):
        pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(s))
        scores.append(float(logp[i, pos, s].sum()))
    return scores


def _token_mask(tokenizer: Any, kind: str) -> torch.Tensor:
    """(V,) bool over the tokenizer's ids, kept per tokenizer: "quote", the tokens whose text holds a double quote
    (they close a JSON string value; byte-level BPE keeps '"' as it is in a piece); "unit", the speech-unit tokens."""
    masks = _MASK_CACHE.setdefault(tokenizer, {})
    if kind not in masks:
        test = {"quote": lambda piece: '"' in piece, "unit": lambda piece: bool(UNIT_RE.fullmatch(piece))}[kind]
        mask = torch.zeros(len(tokenizer), dtype=torch.bool)
        for piece, i in tokenizer.get_vocab().items():
            if 0 <= i < len(mask) and test(piece):
                mask[i] = True
        masks[kind] = mask
    return masks[kind]


_MASK_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # an id() key could outlive its tokenizer


def _quote_or_stop(tokenizer: Any, stop_ids: Sequence[int]) -> torch.Tensor:
    """(V,) bool: what ends a quoted value, a token holding the closing quote or a stop id."""
    ends = _token_mask(tokenizer, "quote").clone()
    ends[[t for t in stop_ids if 0 <= t < len(ends)]] = True
    return ends


def _quoted_text(tokenizer: Any, stops: set[int], tokens: Sequence[int]) -> str:
    """The text of a quoted value's tokens (its closing token included or not), before the closing quote."""
    return tokenizer.decode([t for t in tokens if t not in stops], skip_special_tokens=True).split('"')[0].strip()


def transcript_candidates(model: Any, inputs: dict[str, torch.Tensor], opening: Sequence[int], beams: int,
                          max_new_tokens: int, tokenizer: Any, stop_ids: Sequence[int]) -> tuple[list[str], list[float]]:
    """The `beams` best values of a quoted string the answer opens with (`opening`: the answer's first tokens, up to
    and including the opening quote), by beam search until the closing quote (`beam_search_quoted`). Returns the
    distinct non-empty texts before the quote, best first, with each one's summed log-probability."""
    texts: list[str] = []
    scores: list[float] = []
    stops = set(stop_ids)
    for seq, score in beam_search_quoted(model, inputs, opening, beams, max_new_tokens, tokenizer, stop_ids):
        text = _quoted_text(tokenizer, stops, seq)
        if text and text not in texts:
            texts.append(text)
            scores.append(score)
    return texts, scores


@torch.inference_mode()
def prefill(model: Any, inputs: dict[str, torch.Tensor], extra: Sequence[int] = ()) -> tuple[Any, torch.Tensor]:
    """Run the prompt (images included) and `extra` tokens after it once: (its KV cache, the (1, V) logits of the
    token that comes next). Searches branch from copies of that cache."""
    from transformers import DynamicCache

    ids = inputs["input_ids"]
    if extra:
        ids = torch.cat([ids, torch.tensor([list(extra)], dtype=ids.dtype)], 1)
    prompt = {"input_ids": ids}
    if "pixel_values" in inputs:
        prompt.update(pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    cache = DynamicCache(config=model.config.get_text_config())
    return cache, model(**prompt, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]


@torch.inference_mode()
def beam_search_quoted(model: Any, inputs: dict[str, torch.Tensor], opening: Sequence[int], beams: int,
                       max_new_tokens: int, tokenizer: Any, stop_ids: Sequence[int],
                       start: tuple[Any, torch.Tensor] | None = None) -> list[tuple[list[int], float]]:
    """Beam search from the prompt + `opening` until a token holding a double quote (or a stop id) ends a beam.
    One prefill of the prompt (images included), whose KV cache the beams then share. Returns up to `beams` ended
    beams, best first, then the beams still open after `max_new_tokens`: (tokens after `opening`, summed
    log-probability of those tokens). `start`: that prefill (`prefill(model, inputs, opening)`) when the caller
    has it already; it is copied, not changed."""
    cache, logits = prefill(model, inputs, opening) if start is None else (copy.deepcopy(start[0]), start[1])
    ends = _quote_or_stop(tokenizer, stop_ids)
    seqs: list[list[int]] = [[]]
    scores = torch.zeros(1)
    done: list[tuple[list[int], float]] = []
    alive: list[list[int]] = []
    alive_scores: list[float] = []
    for step in range(max_new_tokens):
        logp = logits.float().log_softmax(-1)
        total = (scores[:, None] + logp[:, : len(ends)]).flatten()
        top = total.topk(min(2 * beams, total.numel()))
        parents, alive, alive_scores = [], [], []
        for score, flat in zip(top.values.tolist(), top.indices.tolist()):
            b, t = divmod(flat, len(ends))
            if ends[t]:
                done.append((seqs[b] + [t], score))
            elif len(alive) < beams:
                parents.append(b)
                alive.append(seqs[b] + [t])
                alive_scores.append(score)
        done = sorted(done, key=lambda d: -d[1])[:beams]  # the best `beams` ended so far
        if len(done) >= beams and (not alive_scores or max(alive_scores) < done[-1][1]):
            break  # no open beam can beat a finished one any more (scores only fall)
        if not alive or step == max_new_tokens - 1:
            break
        if step == 0:  # one cache row per beam from here on
            cache.batch_repeat_interleave(len(parents))
        else:
            cache.reorder_cache(torch.tensor(parents))
        seqs, scores = alive, torch.tensor(alive_scores)
        logits = model(input_ids=torch.tensor([[s[-1]] for s in alive]), cache=cache, use_cache=True).logits[:, -1]
    return done + list(zip(alive, alive_scores))


@dataclass
class Rescored:
    """The chosen transcript and what chose it (all candidates, best LLM beam first)."""

    text: str
    candidates: list[str]
    llm: list[float]
    reader: list[float]
    chosen: int


def choose(llm: Sequence[float], reader: Sequence[float], weight: float, bonus: Sequence[float] | None = None) -> int:
    """Index of the best `llm + weight · reader + bonus` (ties: the earlier, i.e. the better beam); where no
    candidate fits the units (every reader score -inf), of the best `llm + bonus`."""
    if not llm or len(llm) != len(reader) or (bonus is not None and len(bonus) != len(llm)):
        raise ValueError("need one reader score (and one bonus) per candidate")
    plain = [a + b for a, b in zip(llm, bonus)] if bonus is not None else list(llm)
    if weight == 0:
        return max(range(len(plain)), key=lambda i: plain[i])
    total = [a + weight * b for a, b in zip(plain, reader)]
    if all(math.isinf(t) for t in total):  # no candidate fits the units: the LLM's own order decides
        return max(range(len(plain)), key=lambda i: plain[i])
    return max(range(len(total)), key=lambda i: total[i])


def rescore(texts: Sequence[str], llm: Sequence[float], log_probs: torch.Tensor, weight: float) -> Rescored:
    reader = [phone_log_likelihood(log_probs, t) for t in texts]
    k = choose(llm, reader, weight)
    return Rescored(texts[k], list(texts), list(llm), reader, k)


@torch.inference_mode()
def branch_candidates(model: Any, start: tuple[Any, torch.Tensor], best: Sequence[int], ends: torch.Tensor,
                      alternatives: int, max_new_tokens: int, end_id: int | None = None,
                      banned: torch.Tensor | None = None) -> list[tuple[list[int], int | None, float]]:
    """Every way of leaving `best` at one position: keep best[:j], take one of the LLM's `alternatives` most likely
    other tokens at j (never a `banned` one), then go on greedily until a token of `ends` ((V,) bool). `start` is the
    prefilled prompt (`prefill`: its KV cache, copied, and the logits after it); `best` the tokens after the prompt.
    All branches decode as one batch over that shared prompt. Returns (tokens, the token that ended them, summed
    log-probability of the tokens and that end — of `end_id` there instead, when given) for each branch that ended
    within `max_new_tokens`; an alternative that is an end itself gives best[:j]."""
    cache, last = start
    best = list(best)
    rows = [last.reshape(1, -1)]
    if best:
        rows.append(model(input_ids=torch.tensor([best]), cache=copy.deepcopy(cache), use_cache=True).logits[0])
    # row j: the distribution of token j given best[:j], over the whole (padded) vocabulary, as the beams' scores
    logp = torch.cat(rows).float().log_softmax(-1)
    # the masks cover the tokenizer's ids; ids past them (vocabulary padding) never end a branch nor start one
    vocab, known = logp.shape[-1], min(logp.shape[-1], len(ends))
    unusable = torch.ones(vocab, dtype=torch.bool)
    unusable[:known] = False if banned is None else banned[:known]
    ends = torch.cat([ends[:known], ends.new_zeros(vocab - known)])
    banned = unusable
    prefix = [0.0]
    for j, t in enumerate(best):
        prefix.append(prefix[-1] + float(logp[j, t]))

    def end_score(lp: torch.Tensor, t: int) -> float:
        return float(lp[end_id if end_id is not None else t])

    out: list[tuple[list[int], int | None, float]] = []
    seeds: list[list[int]] = []
    scores: list[float] = []
    for j in range(len(best) + 1):
        row = logp[j].masked_fill(banned, -math.inf)
        taken = best[j] if j < len(best) else None
        for t in [t for t in row.topk(alternatives + 1).indices.tolist() if t != taken][:alternatives]:
            if not math.isfinite(float(row[t])):
                continue
            if ends[t]:
                if taken is not None:  # ending at j; ending at len(best) is `best` itself
                    out.append((best[:j], t, prefix[j] + end_score(logp[j], t)))
            elif j < max_new_tokens:
                seeds.append(best[:j] + [t])
                scores.append(prefix[j] + float(logp[j, t]))
    if not seeds:
        return out
    # the seeds, right-aligned after the shared prompt: the gap between them is masked out, positions run on
    n_prompt, width = cache.get_seq_length(), max(len(s) for s in seeds)
    ids = torch.zeros(len(seeds), width, dtype=torch.long)
    pos = torch.zeros(len(seeds), width, dtype=torch.long)
    mask = torch.ones(len(seeds), n_prompt + width, dtype=torch.long)
    for i, s in enumerate(seeds):
        gap = width - len(s)
        ids[i, gap:] = torch.tensor(s)
        pos[i, gap:] = torch.arange(n_prompt, n_prompt + len(s))
        mask[i, n_prompt : n_prompt + gap] = 0
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(len(seeds))
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True).logits[:, -1]
    alive = list(range(len(seeds)))
    while alive:
        lp = logits.float().log_softmax(-1)
        keep, feed = [], []
        for r, (i, t) in enumerate(zip(alive, lp.argmax(-1).tolist())):
            if ends[t]:
                out.append((seeds[i], t, scores[i] + end_score(lp[r], t)))
            elif len(seeds[i]) < max_new_tokens:
                seeds[i].append(t)
                scores[i] += float(lp[r, t])
                keep.append(r)
                feed.append(t)
        if len(keep) < len(alive):
            if keep:
                cache.reorder_cache(torch.tensor(keep))
            mask = mask[keep]
        alive = [alive[r] for r in keep]
        if not alive:
            break
        mask = torch.cat([mask, torch.ones(len(alive), 1, dtype=torch.long)], 1)
        pos = torch.tensor([[n_prompt + len(seeds[i]) - 1] for i in alive])
        logits = model(input_ids=torch.tensor([feed]).T, attention_mask=mask, position_ids=pos, cache=cache,
                       use_cache=True).logits[:, -1]
    return out


def refine(model: Any, start: tuple[Any, torch.Tensor] | None, candidates: Sequence[tuple[list[int], int | None, float]],
           text_of: Callable[[list[int], int | None], str], log_probs: torch.Tensor, weight: float, ends: torch.Tensor,
           rounds: int, alternatives: int, max_new_tokens: int, end_id: int | None = None,
           banned: torch.Tensor | None = None, word_bonus: float = 0.0) -> Rescored | None:
    """Rescore `candidates` ((tokens, end token, LLM log-likelihood), e.g. the beams), then `rounds` times branch
    from the best one (`branch_candidates`) and rescore what that adds: a search that climbs `llm + weight ·
    reader + word_bonus · words` through sentences the beams had pruned, every one still written by the LLM. The
    bonus per word offsets what both scores prefer, shorter sentences: a candidate that drops words loses little
    under the reader, where frames it cannot read are cheap blanks, and gains under the LLM. Candidates are kept
    per text (the higher LLM score; empty texts dropped). None when no candidate has text. `start`: the prefilled
    prompt the branches share (`prefill`; unused, and may be None, when `rounds` is 0)."""
    for name, value, least in (("rounds", rounds, 0), ("alternatives", alternatives, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= 64:
            raise ValueError(f"refine {name} must be an integer in [{least}, 64], got {value!r}")
    if not math.isfinite(word_bonus):
        raise ValueError(f"word bonus must be finite, got {word_bonus!r}")
    if rounds and start is None:
        raise ValueError("refining needs the prefilled prompt (start)")
    pool: dict[str, tuple[list[int], int | None, float]] = {}

    def add(tokens: list[int], end: int | None, llm: float) -> None:
        text = text_of(tokens, end)
        if text and (text not in pool or llm > pool[text][2]):
            pool[text] = (tokens, end, llm)

    for c in candidates:
        add(*c)
    reader: dict[str, float] = {}
    branched: set[str] = set()
    while pool:
        texts = list(pool)
        for t in texts:
            if t not in reader:
                reader[t] = phone_log_likelihood(log_probs, t)
        llm = [pool[t][2] for t in texts]
        k = choose(llm, [reader[t] for t in texts], weight, [word_bonus * len(t.split()) for t in texts])
        if len(branched) == rounds or texts[k] in branched:
            return Rescored(texts[k], texts, llm, [reader[t] for t in texts], k)
        branched.add(texts[k])
        for tokens, end, score in branch_candidates(model, start, pool[texts[k]][0], ends, alternatives,
                                                    max_new_tokens, end_id, banned):
            add(tokens, end, score)
    return None


def rescored_answer(model: Any, inputs: dict[str, torch.Tensor], log_probs: torch.Tensor, beams: int, weight: float,
                    max_new_tokens: int, stop_ids: Sequence[int], pad_id: int, end_id: int,
                    decode: Callable[[list[int]], str], tokenizer: Any, rounds: int = ASR_REFINE_ROUNDS,
                    alternatives: int = REFINE_ALTERNATIVES, word_bonus: float = ASR_WORD_BONUS) -> Rescored | None:
    """The ASR prompt's answer as `Emova.transcribe` gives it: the LLM's `beams` beam-search answers (`decode`d to
    text), rescored, then refined for `rounds` (`refine`; speech-unit tokens are never tried); None when no
    candidate has text."""
    cands = beam_candidates(model, inputs, beams, max_new_tokens, stop_ids, pad_id)
    if not cands:
        return None
    llm = continuation_log_likelihoods(model, inputs, cands, end_id)
    start = prefill(model, inputs) if rounds > 0 else None
    ends = torch.zeros(len(tokenizer), dtype=torch.bool)
    ends[[t for t in stop_ids if 0 <= t < len(ends)]] = True
    return refine(model, start, [(c, None, s) for c, s in zip(cands, llm)], lambda tokens, _end: decode(tokens),
                  log_probs, weight, ends, rounds, alternatives, max_new_tokens, end_id, _token_mask(tokenizer, "unit"),
                  word_bonus)


def transcript_prefix(model: Any, inputs: dict[str, torch.Tensor], tokenizer: Any, log_probs: torch.Tensor,
                      beams: int, weight: float, stop_ids: Sequence[int], max_new_tokens: int = 64,
                      rounds: int = 0, alternatives: int = REFINE_ALTERNATIVES, word_bonus: float = 0.0) -> list[int]:
    """The spoken answer's opening as `Emova.chat` writes it for the model: `{"user question text": "` + the best
    rescored of the LLM's `beams` transcripts (refined for `rounds`, `refine`; none by default) + `", "user
    question emotion": "`; [] when no candidate came out."""
    from emova.model.prompts import ANSWER_KEYS

    opening = "{" + f'"{ANSWER_KEYS[0]}": "'
    start = prefill(model, inputs, tokenizer.encode(opening, add_special_tokens=False))
    stops = set(stop_ids)
    ends = _quote_or_stop(tokenizer, stop_ids)

    def text_of(tokens: list[int], end: int | None) -> str:
        return _quoted_text(tokenizer, stops, tokens + ([end] if end is not None else []))

    beams_out = beam_search_quoted(model, inputs, [], beams, max_new_tokens, tokenizer, stop_ids, start=start)
    cands = [(seq[:-1], seq[-1], sc) if seq and ends[seq[-1]] else (seq, None, sc) for seq, sc in beams_out]
    got = refine(model, start, cands, text_of, log_probs, weight, ends, rounds, alternatives, max_new_tokens,
                 None, _token_mask(tokenizer, "unit"), word_bonus)
    if got is None:
        return []
    return tokenizer.encode(opening + got.text + f'", "{ANSWER_KEYS[1]}": "', add_special_tokens=False)


__all__ = ["ASR_BEAMS", "ASR_READER_WEIGHT", "ASR_REFINE_ROUNDS", "ASR_WORD_BONUS", "READER_WEIGHT",
           "REFINE_ALTERNATIVES", "TRANSCRIPT_BEAMS", "PhoneReader",
           "Rescored", "beam_candidates", "beam_search_quoted", "branch_candidates", "choose",
           "continuation_log_likelihoods", "phone_log_likelihood", "phonemizer_available", "prefill", "refine", "rescore",
           "rescored_answer", "transcript_candidates", "transcript_prefix"]
