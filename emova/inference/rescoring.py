"""N-best rescoring of the LLM's transcripts with the speech tokenizer's phone reader.

The LLM is the recogniser: its answer to the ASR prompt is the transcript. Its first (greedy) choice is often not
its best one, and the speech tokenizer carries a second opinion it was trained with: the S2U's CTC side reads
phones from the units alone (`SpeechTokenizer.phone_log_probs`). So `transcribe` asks the LLM for its `beams`
best transcripts (beam search), scores each one by

    log P_LLM(transcript | prompt)  +  weight · log P_CTC(phones(transcript) | units)

(the phones are espeak-ng's transcription of the text, the phone set the S2U was trained on), and returns the
best. A spoken chat turn does the same for the "user question text" its JSON answer opens with
(`transcript_candidates`, our beam search over one shared prefill) and writes the winner for the model
(`GenerationSettings.prefix`). Every candidate is one the LLM wrote; the reader only chooses among them. Measured
on the held-out world (docs/training.md, "Rescoring with the phone reader"): ASR WER 0.488 → 0.245 (16 beams), FSDD
digits 0.877 → 0.907, spoken-turn transcripts 0.265 → 0.142 (8 beams).

A speech tokenizer without a phone reader (the official one), or a machine without espeak-ng, gives the plain
greedy transcript.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from emova.data.speech.phones import phonemizer_available, phones_to_ids, text_to_phones

#: the pipeline's defaults (`Emova.asr_beams`, `Emova.transcript_beams`, `Emova.asr_reader_weight`), which
#: `emova eval omni` scores too: 16 beams for `transcribe` (held-out ASR WER 0.245 vs 0.280 with 8, docs/training.md),
#: 8 for a spoken turn's transcript (16 gave no better transcripts or answers there)
ASR_BEAMS = 16
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


def _quote_tokens(tokenizer: Any) -> torch.Tensor:
    """(V,) bool: the tokens whose text holds a double quote (they close a JSON string value); kept per tokenizer."""
    mask = _QUOTE_CACHE.get(tokenizer)
    if mask is None:
        mask = torch.zeros(len(tokenizer), dtype=torch.bool)
        for piece, i in tokenizer.get_vocab().items():  # byte-level BPE keeps '"' as it is in a token's piece
            if '"' in piece and 0 <= i < len(mask):
                mask[i] = True
        _QUOTE_CACHE[tokenizer] = mask
    return mask


_QUOTE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # an id() key could outlive its tokenizer


def transcript_candidates(model: Any, inputs: dict[str, torch.Tensor], opening: Sequence[int], beams: int,
                          max_new_tokens: int, tokenizer: Any, stop_ids: Sequence[int]) -> tuple[list[str], list[float]]:
    """The `beams` best values of a quoted string the answer opens with (`opening`: the answer's first tokens, up to
    and including the opening quote), by beam search until the closing quote (`beam_search_quoted`). Returns the
    distinct non-empty texts before the quote, best first, with each one's summed log-probability."""
    texts: list[str] = []
    scores: list[float] = []
    stops = set(stop_ids)
    for seq, score in beam_search_quoted(model, inputs, opening, beams, max_new_tokens, tokenizer, stop_ids):
        text = tokenizer.decode([t for t in seq if t not in stops], skip_special_tokens=True).split('"')[0].strip()
        if text and text not in texts:
            texts.append(text)
            scores.append(score)
    return texts, scores


@torch.inference_mode()
def beam_search_quoted(model: Any, inputs: dict[str, torch.Tensor], opening: Sequence[int], beams: int,
                       max_new_tokens: int, tokenizer: Any, stop_ids: Sequence[int]) -> list[tuple[list[int], float]]:
    """Beam search from the prompt + `opening` until a token holding a double quote (or a stop id) ends a beam.
    One prefill of the prompt (images included), whose KV cache the beams then share. Returns up to `beams` ended
    beams, best first, then the beams still open after `max_new_tokens`: (tokens after `opening`, summed
    log-probability of those tokens)."""
    from transformers import DynamicCache

    ids = torch.cat([inputs["input_ids"], torch.tensor([list(opening)], dtype=inputs["input_ids"].dtype)], 1)
    prompt = {"input_ids": ids}
    if "pixel_values" in inputs:
        prompt.update(pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    cache = DynamicCache(config=model.config.get_text_config())
    logits = model(**prompt, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    ends = _quote_tokens(tokenizer).clone()  # a token holding the closing quote, or a stop id, ends a beam
    ends[[t for t in stop_ids if 0 <= t < len(ends)]] = True
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


def choose(llm: Sequence[float], reader: Sequence[float], weight: float) -> int:
    """Index of the best `llm + weight · reader` (ties: the earlier, i.e. the better beam)."""
    if not llm or len(llm) != len(reader):
        raise ValueError("need one reader score per candidate")
    if weight == 0:
        return max(range(len(llm)), key=lambda i: llm[i])
    total = [a + weight * b for a, b in zip(llm, reader)]
    if all(math.isinf(t) for t in total):  # no candidate fits the units: the LLM's own order decides
        return max(range(len(llm)), key=lambda i: llm[i])
    return max(range(len(total)), key=lambda i: total[i])


def rescore(texts: Sequence[str], llm: Sequence[float], log_probs: torch.Tensor, weight: float) -> Rescored:
    reader = [phone_log_likelihood(log_probs, t) for t in texts]
    k = choose(llm, reader, weight)
    return Rescored(texts[k], list(texts), list(llm), reader, k)


def rescored_answer(model: Any, inputs: dict[str, torch.Tensor], log_probs: torch.Tensor, beams: int, weight: float,
                    max_new_tokens: int, stop_ids: Sequence[int], pad_id: int, end_id: int,
                    decode: Callable[[list[int]], str]) -> Rescored | None:
    """The ASR prompt's answer as `Emova.transcribe` gives it: the LLM's `beams` beam-search answers (`decode`d to
    text), rescored; None when the beam search gave nothing."""
    cands = beam_candidates(model, inputs, beams, max_new_tokens, stop_ids, pad_id)
    if not cands:
        return None
    llm = continuation_log_likelihoods(model, inputs, cands, end_id)
    return rescore([decode(c) for c in cands], llm, log_probs, weight)


def transcript_prefix(model: Any, inputs: dict[str, torch.Tensor], tokenizer: Any, log_probs: torch.Tensor,
                      beams: int, weight: float, stop_ids: Sequence[int], max_new_tokens: int = 64) -> list[int]:
    """The spoken answer's opening as `Emova.chat` writes it for the model: `{"user question text": "` + the best
    rescored of the LLM's `beams` transcripts + `", "user question emotion": "`; [] when no candidate came out."""
    from emova.model.prompts import ANSWER_KEYS

    opening = "{" + f'"{ANSWER_KEYS[0]}": "'
    texts, llm = transcript_candidates(model, inputs, tokenizer.encode(opening, add_special_tokens=False), beams,
                                       max_new_tokens, tokenizer, stop_ids)
    if not texts:
        return []
    chosen = rescore(texts, llm, log_probs, weight).text
    return tokenizer.encode(opening + chosen + f'", "{ANSWER_KEYS[1]}": "', add_special_tokens=False)


__all__ = ["ASR_BEAMS", "READER_WEIGHT", "TRANSCRIPT_BEAMS", "PhoneReader", "Rescored", "beam_candidates", "beam_search_quoted", "choose", "continuation_log_likelihoods",
           "phone_log_likelihood", "phonemizer_available", "rescore", "rescored_answer", "transcript_candidates",
           "transcript_prefix"]
