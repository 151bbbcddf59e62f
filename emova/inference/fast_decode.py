"""A lean KV-cached forward for Qwen2-family language models, for token-by-token decoding at batch size 1.

One decoding step of emova-tiny (4 layers of 256) through the transformers modules costs ~3.9 ms on this CPU.
Most of a step is the matmuls, bound by reading the ~17 MB of fp32 weights they touch from memory; ~1.4 ms is
Python: ~70 module calls, mask and cache bookkeeping, output objects. `LeanDecoder` does the same
arithmetic with the model's own weight tensors (no copies: a 7B model's weights are not duplicated), a rotary
table and a preallocated cache of its own, so a step costs ~2.8 ms
(`benchmarks/decode_speed.py`). The prompt — with its image features written in by the model itself
(`EmovaForConditionalGeneration.embed_inputs`) — goes through the same lean forward.

It computes what the transformers Qwen2 does (RMSNorm in fp32, rotary embedding with the default rope,
grouped-query attention, SiLU MLP; tests compare the logits with transformers' over a prompt, single steps,
multi-token steps and cache crops). `lean_unsupported(model)` names why a model cannot use it — another
architecture, rope scaling, sliding windows, LoRA-wrapped or otherwise replaced layers — and the callers then
keep the transformers path (`GenerationSettings.lean`), so nothing is ever decoded by an approximation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_LAYER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _text_parts(model: Any) -> tuple[Any, Any, Any]:
    """(text config, decoder (embed_tokens, layers, norm), lm_head) of an Emova model or a bare causal LM."""
    lm = getattr(model, "language_model", model)
    return model.config.get_text_config(), getattr(lm, "model", None), getattr(lm, "lm_head", None)


def lean_unsupported(model: Any) -> str | None:
    """Why `LeanDecoder` cannot run this model exactly (None: it can)."""
    cfg, base, head = _text_parts(model)
    if getattr(cfg, "model_type", None) != "qwen2":
        return f"text model type {getattr(cfg, 'model_type', None)!r} (the lean decoder implements qwen2)"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default" or set(rope) - {"rope_type", "type", "rope_theta"}:
        return f"rope type {kind!r} with {sorted(set(rope) - {'rope_type', 'type'})} (only the default rope is implemented)"
    if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window attention"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    if base is None or head is None or type(head) is not nn.Linear or head.bias is not None:
        return "no plain lm_head / decoder"
    for i, layer in enumerate(base.layers):
        for name in _LAYER_LINEARS:
            mod = layer.get_submodule(name)
            if type(mod) is not nn.Linear:  # LoRA (peft) or another wrapper: its extra terms would be skipped
                return f"layer {i} {name} is a {type(mod).__name__}, not a plain Linear"
    return None


class LeanDecoder:
    """Batch-1 decoding with its own cache: `prefill(embeds (T, C))` then `step(ids)` (one or several new
    tokens, e.g. a token and a speculative draft), each returning logits (T', V) for the last `keep` positions;
    `crop(n)` forgets the last n positions."""

    def __init__(self, model: Any, max_len: int) -> None:
        reason = lean_unsupported(model)
        if reason is not None:
            raise ValueError(f"the lean decoder cannot run this model: {reason}")
        cfg, base, head = _text_parts(model)
        self.heads, self.kv_heads = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.eps = float(cfg.rms_norm_eps)
        self.embed, self.norm, self.head = base.embed_tokens.weight, base.norm.weight, head.weight
        dev, dtype = self.embed.device, self.embed.dtype
        self.layers = [(layer.input_layernorm, layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                        layer.self_attn.o_proj, layer.post_attention_layernorm, layer.mlp.gate_proj, layer.mlp.up_proj,
                        layer.mlp.down_proj) for layer in base.layers]  # modules, read for their .weight / .bias
        self.max_len = int(max_len)
        shape = (len(self.layers), self.kv_heads, self.max_len, self.head_dim)
        self.k = torch.zeros(shape, device=dev, dtype=dtype)
        self.v = torch.zeros(shape, device=dev, dtype=dtype)
        theta = float((getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        inv_freq = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, device=dev, dtype=torch.float32) / self.head_dim)
        freqs = torch.arange(self.max_len, device=dev, dtype=torch.float32)[:, None] * inv_freq
        emb = torch.cat([freqs, freqs], -1)  # (max_len, head_dim), as transformers' rotary embedding
        self.cos, self.sin = emb.cos().to(dtype), emb.sin().to(dtype)
        self.length = 0

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused op (x · rsqrt(mean(x²) + eps) · w)
            return F.rms_norm(x, w.shape, w, self.eps)
        x32 = x.float()  # transformers' order for half precision: normalise in fp32, cast, then scale
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def _rope(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin

    @torch.inference_mode()
    def forward(self, h: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """h (T, C) input embeddings of the next T positions → logits (keep, V) of the last `keep` of them."""
        n_new = int(h.shape[0])
        start, end = self.length, self.length + n_new
        if end > self.max_len:
            raise ValueError(f"the lean decoder's cache holds {self.max_len} positions; {end} asked")
        cos, sin = self.cos[start:end], self.sin[start:end]
        mask = None if n_new == 1 else torch.ones(n_new, end, dtype=torch.bool, device=h.device).tril(start)
        for i, (ln1, q_p, k_p, v_p, o_p, ln2, gate_p, up_p, down_p) in enumerate(self.layers):
            x = self._rms(h, ln1.weight)
            q, k, v = (F.linear(x, p.weight, p.bias).view(n_new, -1, self.head_dim).transpose(0, 1) for p in (q_p, k_p, v_p))
            qk = self._rope(torch.cat([q, k]), cos, sin)  # q and k heads rotated together
            self.k[i, :, start:end] = qk[self.heads:]
            self.v[i, :, start:end] = v
            att = F.scaled_dot_product_attention(qk[None, : self.heads], self.k[i, None, :, :end], self.v[i, None, :, :end],
                                                 attn_mask=mask, enable_gqa=self.kv_heads != self.heads)[0]
            h = h + F.linear(att.transpose(0, 1).reshape(n_new, -1), o_p.weight, o_p.bias)
            x = self._rms(h, ln2.weight)
            h = h + F.linear(F.silu(F.linear(x, gate_p.weight, gate_p.bias)) * F.linear(x, up_p.weight, up_p.bias),
                             down_p.weight, down_p.bias)
        self.length = end
        return F.linear(self._rms(h[-keep:], self.norm), self.head)

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        """The prompt's embeddings (T, C) from position 0 → logits (1, V) of its last position."""
        self.length = 0
        return self.forward(embeds.to(self.embed.dtype), keep=1)

    def step(self, ids: list[int]) -> torch.Tensor:
        """New token ids → logits (len(ids), V), one row per new position."""
        h = F.embedding(torch.tensor(ids, device=self.embed.device), self.embed)
        return self.forward(h, keep=len(ids))

    def crop(self, n: int) -> None:
        """Forget the last n positions (rejected draft tokens)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot crop {n} of {self.length} cached positions")
        self.length -= n


__all__ = ["LeanDecoder", "lean_unsupported"]
