"""Key/shape schemas of the released EMOVA checkpoints, written out from the official sources
(independently of emova.convert): Qwen2 decoder names, Qwen2-VL ViT names, LLaVA-style MLP projector.

official-train (EmovaQwen2ForCausalLM, emova-ollm/EMOVA emova/model/language_model/emova_qwen2.py):
  model.{embed_tokens,layers.N,norm}.*, lm_head.weight, model.vision_tower.vision_tower.<ViT>, model.mm_projector.{0,2}.*
official-hf (EMOVAForConditionalGeneration): language_model.<Qwen2ForCausalLM>, vision_tower.<ViT>, mm_projector.{0,2}.*
(the HF prefixes are an assumption — see docs/running_official_models.md).
"""

from __future__ import annotations

from typing import Any


def qwen2_keys(t: dict[str, Any], prefix: str, head: str | None) -> dict[str, list[int]]:
    h, v, ff = t["hidden_size"], t["vocab_size"], t["intermediate_size"]
    hd = h // t["num_attention_heads"]
    kv = t["num_key_value_heads"] * hd
    out = {f"{prefix}embed_tokens.weight": [v, h], f"{prefix}norm.weight": [h]}
    for i in range(t["num_hidden_layers"]):
        p = f"{prefix}layers.{i}."
        out.update({
            p + "self_attn.q_proj.weight": [h, h], p + "self_attn.q_proj.bias": [h],
            p + "self_attn.k_proj.weight": [kv, h], p + "self_attn.k_proj.bias": [kv],
            p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.v_proj.bias": [kv],
            p + "self_attn.o_proj.weight": [h, h],
            p + "mlp.gate_proj.weight": [ff, h], p + "mlp.up_proj.weight": [ff, h], p + "mlp.down_proj.weight": [h, ff],
            p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
        })
    if head is not None and not t.get("tie_word_embeddings", False):
        out[head] = [v, h]
    return out


def vit_keys(vc: dict[str, Any], prefix: str) -> dict[str, list[int]]:
    e, c, tp, p, m = vc["embed_dim"], vc["in_channels"], vc["temporal_patch_size"], vc["patch_size"], vc["spatial_merge_size"]
    mlp, merged = e * vc["mlp_ratio"], e * m * m
    out = {prefix + "patch_embed.proj.weight": [e, c, tp, p, p]}
    for j in range(vc["depth"]):
        b = f"{prefix}blocks.{j}."
        out.update({
            b + "norm1.weight": [e], b + "norm1.bias": [e], b + "norm2.weight": [e], b + "norm2.bias": [e],
            b + "attn.qkv.weight": [3 * e, e], b + "attn.qkv.bias": [3 * e],
            b + "attn.proj.weight": [e, e], b + "attn.proj.bias": [e],
            b + "mlp.fc1.weight": [mlp, e], b + "mlp.fc1.bias": [mlp],
            b + "mlp.fc2.weight": [e, mlp], b + "mlp.fc2.bias": [e],
        })
    out.update({
        prefix + "merger.ln_q.weight": [e], prefix + "merger.ln_q.bias": [e],
        prefix + "merger.mlp.0.weight": [merged, merged], prefix + "merger.mlp.0.bias": [merged],
        prefix + "merger.mlp.2.weight": [vc["hidden_size"], merged], prefix + "merger.mlp.2.bias": [vc["hidden_size"]],
    })
    return out


def projector_keys(in_dim: int, out_dim: int, prefix: str, depth: int = 2) -> dict[str, list[int]]:
    out = {prefix + "0.weight": [out_dim, in_dim], prefix + "0.bias": [out_dim]}
    for i in range(1, depth):
        out[f"{prefix}{2 * i}.weight"] = [out_dim, out_dim]
        out[f"{prefix}{2 * i}.bias"] = [out_dim]
    return out


def official_manifest(text: dict[str, Any], vision: dict[str, Any], layout: str) -> dict[str, list[int]]:
    if layout == "official-hf":
        return {**qwen2_keys(text, "language_model.model.", "language_model.lm_head.weight"),
                **vit_keys(vision, "vision_tower."),
                **projector_keys(vision["hidden_size"], text["hidden_size"], "mm_projector.")}
    if layout == "official-train":
        return {**qwen2_keys(text, "model.", "lm_head.weight"),
                **vit_keys(vision, "model.vision_tower.vision_tower."),
                **projector_keys(vision["hidden_size"], text["hidden_size"], "model.mm_projector.")}
    raise ValueError(layout)
