#!/usr/bin/env python3
"""Make the golden test fixtures under tests/data/fixtures/ (tiny random DeepSeek models).

How to run (from the repository root; CPU only, about a minute, no network beyond PyPI):

    python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-fixtures.txt \
        && .venv/bin/python scripts/make_fixtures.py

Each fixture is a Hugging Face model directory (config.json, safetensors weights and, where
sharded, model.safetensors.index.json) plus golden.json with reference logits and greedy tokens:

  v3_bf16     DeepseekV3ForCausalLM, BF16 weights, one model.safetensors (+ an MTP layer).
  v3_fp8      The same weights, linear layers quantised by this script to F8_E4M3 with
              128x128 block scales (`<name>_scale_inv`, F32), like the real V3 release.
  v2_lite     DeepseekV2ForCausalLM in DeepSeek-V2-Lite style (q_proj, softmax, greedy), F16.
  v3_sharded  The weights of v3_bf16 split over two files with an index.json.
  v3_mla      DeepseekV3ForCausalLM with DeepSeek-V3's own MLA dimensions (the 576-value latent),
              tiny elsewhere, BF16, one model.safetensors, no MTP layer.

The models are built from configs with transformers' own classes (nothing is downloaded),
seeded, and run in float32 with eager attention on the ROUNDED weights (BF16 / F16 / FP8
dequantised), so the stored checkpoint is exactly the model the references come from.

Why the fixtures are "sensitive" (a runtime with a typical bug must fail them):
  * weights are normal with std GAIN/sqrt(fan_in) (GAIN ~ 1-2), much larger than the default
    std 0.02, so attention is far from uniform (a wrong RoPE, softmax scale or mask changes
    the result a lot) and routing is far from ties; the script prints attention entropy
    against the uniform entropy and the routing gaps to prove it;
  * every RMSNorm weight is uniform(0.5, 1.5), so a norm applied to the wrong slice, or
    skipped, shows up;
  * `e_score_correction_bias` is uniform(0.1, 1.0): it changes the V3 expert choice (and a
    runtime that uses it in the expert weights, or ignores it, fails). It must be positive:
    transformers masks the excluded groups with 0.0, not -inf, so a non-positive choice
    score could let a masked expert win;
  * the prompt seeds are chosen so that every greedy step has a clear top-1/top-2 logit
    margin and no routing decision is near a tie; the script then runs the reference with
    typical bugs injected (non-interleaved RoPE, no YaRN, no mscale, no correction bias,
    bias in the expert weights, no group limit, no top-k renormalisation) and prints how far
    each lands from the golden logits.
"""

import argparse
import copy
import json
import math
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer

TRANSFORMERS_VERSION = "4.57.1"
ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "tests" / "data" / "fixtures"

WEIGHT_SEED = 1234         # torch.manual_seed for the model weights
PROMPT_SEED_BASE = 1000    # prompt seeds are searched upward from here (per case)
MAX_SEED_TRIES = 400
NUM_GENERATE = 16
POSITION_LOGITS_MAX_PROMPT = 40   # position_logits only for prompts shorter than this
CASES = [("short", 7), ("medium", 33), ("long", 210)]
# Acceptance of a prompt: every greedy step's top1-top2 logit margin and every routing gap
# (on prompt + generated tokens) at least this large. The hard floor asserted is 1e-3.
# Routing gaps are in score units: V3 choice = sigmoid + bias (values ~0.1..2), V2 softmax
# probabilities (~1/n_routed_experts each), hence the smaller V2 target.
TARGET_LOGIT_MARGIN = 0.1
TARGET_ROUTING_GAP = {"deepseek_v3": 1e-4, "deepseek_v2": 2e-5}
HARD_MIN_MARGIN = 1e-3

# Weight scale: std = GAIN / sqrt(fan_in). The query/key up-projections get a larger gain so
# that attention logits have a spread of several units (attention far from uniform).
GAIN_DEFAULT = 1.0
GAIN_QK = 1.5             # q_b_proj / q_proj, kv_b_proj, kv_a_proj_with_mqa
GAIN_ROUTER = 2.0         # mlp.gate.weight: router logits with a spread of ~2
GAIN_LM_HEAD = 3.0        # logits with a spread of ~3: clear greedy margins
EMBED_STD = 1.0
NORM_RANGE = (0.5, 1.5)
BIAS_RANGE = (0.1, 1.0)

# ----------------------------------------------------------------------------------------
# Configs. V3: every key of the real DeepSeek-V3 config.json (tests: /work/shared/configs/
# deepseek-v3.json), same order, tiny values. quantization_config only for the FP8 fixture.
# ----------------------------------------------------------------------------------------
V3_REAL_KEYS = [
    "architectures", "model_type", "attention_bias", "attention_dropout", "bos_token_id",
    "eos_token_id", "first_k_dense_replace", "hidden_act", "hidden_size", "initializer_range",
    "intermediate_size", "kv_lora_rank", "max_position_embeddings", "moe_intermediate_size",
    "moe_layer_freq", "n_group", "n_routed_experts", "n_shared_experts", "norm_topk_prob",
    "num_attention_heads", "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads",
    "num_nextn_predict_layers", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
    "quantization_config", "rms_norm_eps", "rope_scaling", "rope_theta", "routed_scaling_factor",
    "scoring_func", "tie_word_embeddings", "topk_group", "topk_method", "torch_dtype", "use_cache",
    "v_head_dim", "vocab_size",
]

V3_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 128,
    "initializer_range": 0.02,
    "intermediate_size": 320,
    "kv_lora_rank": 160,
    "max_position_embeddings": 163840,
    "moe_intermediate_size": 64,
    "moe_layer_freq": 1,
    "n_group": 4,
    "n_routed_experts": 16,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 8,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 3,
    "num_key_value_heads": 8,
    "num_nextn_predict_layers": 1,
    "q_lora_rank": 192,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "quantization_config": None,  # filled for v3_fp8 only, removed otherwise
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "tie_word_embeddings": False,
    "topk_group": 2,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "v_head_dim": 32,
    "vocab_size": 256,
}

# v3_mla: DeepSeek-V3's own attention dimensions (kv_lora_rank 512, qk_rope 64, qk_nope 128,
# v_head 128: the 576-value latent the decode kernels are built for), everything else tiny:
# 8 heads (the kv_b_proj of 8 x 256 rows x 512 is most of its bytes), hidden 64, 2 layers
# (layer 0 dense, layer 1 MoE), no MTP layer. The CUDA backend's tensor-core decode kernels
# (mma.sync, and wgmma at 16 and 64 heads per block) take only this latent.
V3_MLA_CONFIG = dict(V3_CONFIG)
V3_MLA_CONFIG.update({
    "hidden_size": 64,
    "intermediate_size": 128,
    "kv_lora_rank": 512,
    "moe_intermediate_size": 32,
    "n_group": 4,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 2,
    "num_nextn_predict_layers": 0,
    "q_lora_rank": 96,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
})
V3_MLA_WEIGHT_SEED = 1236  # torch.manual_seed for v3_mla's weights (v2_lite has 1235)

FP8_QUANTIZATION_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}

# V2: the keys of the real DeepSeek-V2-Lite config.json (deepseek-ai/DeepSeek-V2-Lite), less
# "auto_map" (points at remote code we do not ship) and "transformers_version" (both are also
# absent from the V3 reference config). Tiny values; every head / expert / vocab /
# intermediate count divisible by 4 (tensor-parallel tests up to 4 ranks).
V2_LITE_KEYS = [
    "architectures", "attention_bias", "attention_dropout", "aux_loss_alpha", "bos_token_id",
    "eos_token_id", "ep_size", "first_k_dense_replace", "hidden_act", "hidden_size",
    "initializer_range", "intermediate_size", "kv_lora_rank", "max_position_embeddings",
    "model_type", "moe_intermediate_size", "moe_layer_freq", "n_group", "n_routed_experts",
    "n_shared_experts", "norm_topk_prob", "num_attention_heads", "num_experts_per_tok",
    "num_hidden_layers", "num_key_value_heads", "pretraining_tp", "q_lora_rank",
    "qk_nope_head_dim", "qk_rope_head_dim", "rms_norm_eps", "rope_scaling", "rope_theta",
    "routed_scaling_factor", "scoring_func", "seq_aux", "tie_word_embeddings", "topk_group",
    "topk_method", "torch_dtype", "use_cache", "v_head_dim", "vocab_size",
]

V2_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 128,
    "initializer_range": 0.02,
    "intermediate_size": 288,
    "kv_lora_rank": 96,
    "max_position_embeddings": 2048,
    "model_type": "deepseek_v2",
    "moe_intermediate_size": 48,
    "moe_layer_freq": 1,
    "n_group": 1,
    "n_routed_experts": 16,
    "n_shared_experts": 2,
    "norm_topk_prob": False,
    "num_attention_heads": 8,
    "num_experts_per_tok": 6,
    "num_hidden_layers": 3,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "q_lora_rank": None,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000,
    "routed_scaling_factor": 1.0,
    "scoring_func": "softmax",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "greedy",
    "torch_dtype": "float16",
    "use_cache": True,
    "v_head_dim": 32,
    "vocab_size": 256,
}

# Linear weights the real DeepSeek-V3 release stores in FP8 (everything else stays BF16/F32).
FP8_WEIGHT_RE = re.compile(
    r"\.(q_a_proj|q_b_proj|q_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$"
)
FP8_BLOCK = 128
FP8_MAX = 448.0


# ----------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------
def expected_layer_names(cfg, i):
    p = f"model.layers.{i}."
    names = [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    a = p + "self_attn."
    if cfg["q_lora_rank"] is None:
        names.append(a + "q_proj.weight")
    else:
        names += [a + "q_a_proj.weight", a + "q_a_layernorm.weight", a + "q_b_proj.weight"]
    names += [a + "kv_a_proj_with_mqa.weight", a + "kv_a_layernorm.weight", a + "kv_b_proj.weight",
              a + "o_proj.weight"]
    m = p + "mlp."
    if is_moe_layer(cfg, i):
        names.append(m + "gate.weight")
        if cfg["model_type"] == "deepseek_v3":
            names.append(m + "gate.e_score_correction_bias")
        for e in range(cfg["n_routed_experts"]):
            names += [f"{m}experts.{e}.{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
        names += [f"{m}shared_experts.{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
    else:
        names += [f"{m}{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
    return names


def is_moe_layer(cfg, i):
    return i >= cfg["first_k_dense_replace"] and i % cfg["moe_layer_freq"] == 0


def expected_names(cfg, with_mtp):
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    n = cfg["num_hidden_layers"]
    for i in range(n):
        names += expected_layer_names(cfg, i)
    if with_mtp:
        for k in range(cfg["num_nextn_predict_layers"]):
            i = n + k
            names += expected_layer_names(cfg, i)
            p = f"model.layers.{i}."
            names += [p + "enorm.weight", p + "hnorm.weight", p + "eh_proj.weight",
                      p + "shared_head.norm.weight", p + "shared_head.head.weight",
                      p + "embed_tokens.weight"]
    assert len(names) == len(set(names))
    return set(names)


# ----------------------------------------------------------------------------------------
# Model construction
# ----------------------------------------------------------------------------------------
def hf_config_kwargs(cfg):
    kw = copy.deepcopy(cfg)
    for k in ("quantization_config", "torch_dtype", "architectures", "model_type"):
        kw.pop(k, None)
    return kw


def build_model(cfg):
    if cfg["model_type"] == "deepseek_v3":
        config = DeepseekV3Config(**hf_config_kwargs(cfg))
        cls = DeepseekV3ForCausalLM
    else:
        config = DeepseekV2Config(**hf_config_kwargs(cfg))
        cls = DeepseekV2ForCausalLM
    model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    model = model.float().eval()
    assert model.config._attn_implementation == "eager"
    return model


def init_param(name, t):
    """Sensitive init (see the module docstring). t is float32, filled in place."""
    if name.endswith("norm.weight"):
        t.uniform_(*NORM_RANGE)
    elif name.endswith("e_score_correction_bias"):
        t.uniform_(*BIAS_RANGE)
    elif name.endswith("embed_tokens.weight"):
        t.normal_(0.0, EMBED_STD)
    elif t.dim() == 2:
        fan_in = t.shape[1]
        if name.endswith("mlp.gate.weight"):
            gain = GAIN_ROUTER
        elif name.endswith(("lm_head.weight", "shared_head.head.weight")):
            gain = GAIN_LM_HEAD
        elif re.search(r"\.(q_b_proj|q_proj|kv_b_proj|kv_a_proj_with_mqa)\.weight$", name):
            gain = GAIN_QK
        else:
            gain = GAIN_DEFAULT
        t.normal_(0.0, gain / math.sqrt(fan_in))
    else:
        raise AssertionError(f"no init rule for {name} {tuple(t.shape)}")


def named_tensors(module):
    """Parameters and persistent buffers (e_score_correction_bias), as in the state dict."""
    return dict(module.state_dict())


def init_model(model):
    with torch.no_grad():
        sd = named_tensors(model)
        for name in sorted(sd):
            init_param(name, sd[name])


def make_mtp_tensors(cfg, config):
    """A multi-token-prediction layer as the real V3 release stores it (model.layers.<n>.*).
    Random values; not part of the main forward pass (transformers does not build it)."""
    n = cfg["num_hidden_layers"]
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    layer = DeepseekV3DecoderLayer(config, layer_idx=n).float()
    out = {}
    with torch.no_grad():
        for k, t in layer.state_dict().items():
            out[f"model.layers.{n}.{k}"] = t.clone()
        out[f"model.layers.{n}.enorm.weight"] = torch.empty(h)
        out[f"model.layers.{n}.hnorm.weight"] = torch.empty(h)
        out[f"model.layers.{n}.eh_proj.weight"] = torch.empty(h, 2 * h)
        out[f"model.layers.{n}.shared_head.norm.weight"] = torch.empty(h)
        out[f"model.layers.{n}.shared_head.head.weight"] = torch.empty(v, h)
        out[f"model.layers.{n}.embed_tokens.weight"] = torch.empty(v, h)
        for k in sorted(out):
            init_param(k, out[k])
    return out


def store_dtype_for(name, base_dtype):
    # The real V3 release stores the correction bias in F32; everything else in the model dtype.
    if name.endswith("e_score_correction_bias"):
        return torch.float32
    return base_dtype


def round_to(tensors, base_dtype):
    """Round to the stored dtype; returns (stored tensors, float32 values they represent)."""
    stored, values = {}, {}
    for k, t in tensors.items():
        s = t.to(store_dtype_for(k, base_dtype)).contiguous()
        stored[k] = s
        values[k] = s.float()
    return stored, values


def fp8_quantize(w):
    """w: float32 [rows, cols] -> (F8_E4M3 [rows, cols], F32 scale_inv [ceil(rows/128), ceil(cols/128)]).
    scale_inv = amax(block) / 448; dequantised value = fp8 * scale_inv (edge blocks partial)."""
    rows, cols = w.shape
    br, bc = -(-rows // FP8_BLOCK), -(-cols // FP8_BLOCK)
    padded = torch.zeros(br * FP8_BLOCK, bc * FP8_BLOCK, dtype=torch.float32)
    padded[:rows, :cols] = w
    blocks = padded.view(br, FP8_BLOCK, bc, FP8_BLOCK)
    amax = blocks.abs().amax(dim=(1, 3))
    scale_inv = amax / FP8_MAX
    assert bool((scale_inv > 0).all()), "all-zero FP8 block"
    expanded = scale_inv.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)[:rows, :cols]
    q = (w / expanded).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.contiguous(), scale_inv.contiguous()


def fp8_dequantize(q, scale_inv):
    rows, cols = q.shape
    expanded = scale_inv.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)[:rows, :cols]
    return q.float() * expanded


# ----------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------
def last_logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0].float()


def margin_of(row):
    top = torch.topk(row, 2).values
    return float(top[0] - top[1])


class RoutingProbe:
    """Records the router inputs of every MoE layer and measures how far each routing
    decision is from a tie (group selection and expert selection)."""

    def __init__(self, model, cfg):
        self.cfg = cfg
        self.inputs = []
        self.handles = []
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None)
            if gate is not None and hasattr(gate, "weight") and gate.weight.dim() == 2:
                self.handles.append(gate.register_forward_hook(self._hook))

    def _hook(self, module, args, output):
        h = args[0].reshape(-1, args[0].shape[-1]).float()
        self.inputs.append((module, h.detach().clone()))

    def clear(self):
        self.inputs = []

    def remove(self):
        for h in self.handles:
            h.remove()

    def min_gaps(self):
        cfg = self.cfg
        k = cfg["num_experts_per_tok"]
        e = cfg["n_routed_experts"]
        min_group_gap, min_expert_gap = math.inf, math.inf
        for module, h in self.inputs:
            logits = h @ module.weight.float().t()
            if cfg["model_type"] == "deepseek_v3":
                scores = logits.sigmoid()
                choice = scores + module.e_score_correction_bias.float()
                g = cfg["n_group"]
                gs = choice.view(-1, g, e // g).topk(2, dim=-1).values.sum(-1)
                gsorted = gs.sort(dim=-1, descending=True).values
                tg = cfg["topk_group"]
                if tg < g:
                    min_group_gap = min(min_group_gap, float((gsorted[:, tg - 1] - gsorted[:, tg]).min()))
                keep = torch.zeros_like(gs).scatter_(1, gs.topk(tg, dim=-1).indices, 1.0)
                mask = keep.unsqueeze(-1).expand(-1, g, e // g).reshape(-1, e).bool()
                choice = choice.masked_fill(~mask, -math.inf)
            else:
                choice = logits.softmax(dim=-1)
            csorted = choice.sort(dim=-1, descending=True).values
            min_expert_gap = min(min_expert_gap, float((csorted[:, k - 1] - csorted[:, k]).min()))
        return min_group_gap, min_expert_gap


def greedy_case(model, prompt):
    """Greedy decode by full recompute. Returns position_logits, generated ids, logits rows."""
    ids = list(prompt)
    rows, generated, position_logits = [], [], None
    for i in range(NUM_GENERATE):
        logits = last_logits(model, ids)
        if i == 0:
            position_logits = logits
        row = logits[-1]
        tok = int(torch.argmax(row))
        rows.append(row)
        generated.append(tok)
        ids.append(tok)
    return position_logits, generated, rows


def make_prompt(seed, length, vocab):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (length,), generator=g).tolist()


def choose_case(model, cfg, probe, name, length, log):
    vocab = cfg["vocab_size"]
    best = None
    for t in range(MAX_SEED_TRIES):
        seed = PROMPT_SEED_BASE + 97 * t + length
        prompt = make_prompt(seed, length, vocab)
        pos, gen, rows = greedy_case(model, prompt)
        margins = [margin_of(r) for r in rows]
        probe.clear()
        last_logits(model, prompt + gen[:-1])
        group_gap, expert_gap = probe.min_gaps()
        probe.clear()
        target_gap = TARGET_ROUTING_GAP[cfg["model_type"]]
        ok = min(margins) >= TARGET_LOGIT_MARGIN and group_gap >= target_gap and expert_gap >= target_gap
        score = min(min(margins) / TARGET_LOGIT_MARGIN, group_gap / target_gap, expert_gap / target_gap)
        cand = dict(name=name, seed=seed, prompt=prompt, position_logits=pos, generated=gen, rows=rows,
                    margins=margins, group_gap=group_gap, expert_gap=expert_gap, tries=t + 1)
        if best is None or score > best["score"]:
            best = dict(cand, score=score)
        if ok:
            best = dict(cand, score=score)
            break
    else:
        log(f"  WARNING {name}: no seed met the targets in {MAX_SEED_TRIES} tries; best kept")
    assert min(best["margins"]) > HARD_MIN_MARGIN, f"{name}: margin {min(best['margins'])}"
    log(f"  case {name:6s} len {length:3d} seed {best['seed']} (try {best['tries']}): "
        f"min margin {min(best['margins']):.4f}, min routing gap group {best['group_gap']:.2e} "
        f"expert {best['expert_gap']:.2e}")
    return best


def attention_entropy(model, prompt, min_keys=16):
    """Mean attention entropy / uniform entropy (log n_keys) over query rows with >= min_keys keys."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt]), use_cache=False, output_attentions=True)
    ratios_per_layer = []
    for a in out.attentions:  # [1, heads, q, k]
        a = a[0].float()
        q = a.shape[1]
        ent = -(a * torch.log(a.clamp_min(1e-30))).sum(-1)  # [heads, q]
        nkeys = torch.arange(1, q + 1, dtype=torch.float32)
        sel = nkeys >= min_keys
        ratios_per_layer.append((ent[:, sel] / torch.log(nkeys[sel])).flatten())
    allr = torch.cat(ratios_per_layer)
    maxw = max(float(a[0].max(-1).values[:, min_keys - 1:].mean()) for a in out.attentions)
    return dict(per_layer=[float(r.mean()) for r in ratios_per_layer], mean=float(allr.mean()),
                p10=float(allr.quantile(0.1)), p90=float(allr.quantile(0.9)), max_weight_mean=maxw)


# ----------------------------------------------------------------------------------------
# Injected bugs (sensitivity check)
# ----------------------------------------------------------------------------------------
def v3_bug_variants(model, cfg):
    """Yields (description, context manager-like (apply, undo)) pairs for the V3 model."""
    layers = list(model.model.layers)
    routers = [l.mlp.gate for l in layers if hasattr(l.mlp, "gate")]
    attns = [l.self_attn for l in layers]
    rot = model.model.rotary_emb

    def attr_swap(objs, attr, value):
        saved = [getattr(o, attr) for o in objs]

        def apply():
            for o in objs:
                setattr(o, attr, value(o) if callable(value) else value)

        def undo():
            for o, s in zip(objs, saved):
                setattr(o, attr, s)
        return apply, undo

    yield "RoPE on halves instead of interleaved pairs", attr_swap([model.config], "rope_interleave", False)
    d = cfg["qk_rope_head_dim"]
    plain = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    yield "no YaRN frequency scaling", attr_swap([rot], "inv_freq", plain)
    yield "softmax scale without mscale^2", attr_swap(attns, "scaling", lambda a: a.qk_head_dim ** -0.5)
    yield "no e_score_correction_bias", attr_swap(
        routers, "e_score_correction_bias", lambda r: torch.zeros_like(r.e_score_correction_bias))
    yield "no group limit (n_group=1)", _multi_swap(
        [attr_swap(routers, "n_group", 1), attr_swap(routers, "topk_group", 1)])
    yield "no top-k renormalisation", attr_swap(routers, "norm_topk_prob", False)

    def biased_forward(self, hidden_states):
        hidden_states = hidden_states.view(-1, self.config.hidden_size)
        logits = torch.nn.functional.linear(hidden_states.float(), self.weight.float())
        scores = logits.sigmoid()
        idx = self.get_topk_indices(scores)
        w = (scores + self.e_score_correction_bias).gather(1, idx)
        w = w / (w.sum(-1, keepdim=True) + 1e-20) if self.norm_topk_prob else w
        return idx, w * self.routed_scaling_factor

    yield "correction bias in the expert weights", attr_swap(
        routers, "forward", lambda r: types.MethodType(biased_forward, r))


def _multi_swap(pairs):
    def apply():
        for a, _ in pairs:
            a()

    def undo():
        for _, u in reversed(pairs):
            u()
    return apply, undo


def v2_bug_variants(model, cfg):
    import transformers.models.deepseek_v2.modeling_deepseek_v2 as m2
    gates = [l.mlp.gate for l in model.model.layers if hasattr(l.mlp, "gate")]

    def sigmoid_apply():
        for g in gates:
            g._orig_forward = g.forward

            def fwd(self, hidden_states):
                b, s, h = hidden_states.shape
                logits = torch.nn.functional.linear(hidden_states.view(-1, h).float(), self.weight.float())
                scores = logits.sigmoid()
                w, idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
                return idx, w * self.routed_scaling_factor
            g.forward = types.MethodType(fwd, g)

    def gate_undo():
        for g in gates:
            g.forward = g._orig_forward
            del g._orig_forward

    yield "sigmoid instead of softmax routing", (sigmoid_apply, gate_undo)

    def renorm_apply():
        for g in gates:
            g._orig_forward = g.forward

            def fwd(self, hidden_states, _orig=g.forward):
                idx, w = _orig(hidden_states)
                return idx, w / w.sum(-1, keepdim=True)
            g.forward = types.MethodType(fwd, g)

    yield "top-k weights renormalised", (renorm_apply, gate_undo)
    orig_rotary = m2.apply_rotary_emb

    def noninterleaved_apply():
        def halves(xq, xk, freqs_cis):
            def rot(x):
                d = x.shape[-1]
                xc = torch.complex(x[..., : d // 2].float(), x[..., d // 2:].float())
                y = xc * freqs_cis.unsqueeze(1)
                return torch.cat([y.real, y.imag], dim=-1).type_as(x)
            return rot(xq), rot(xk)
        m2.apply_rotary_emb = halves

    def noninterleaved_undo():
        m2.apply_rotary_emb = orig_rotary

    yield "RoPE on halves instead of interleaved pairs", (noninterleaved_apply, noninterleaved_undo)


def sensitivity(model, cfg, cases, log):
    variants = v3_bug_variants(model, cfg) if cfg["model_type"] == "deepseek_v3" else v2_bug_variants(model, cfg)
    log("  injected bugs (max |logit - golden| over the 16 greedy rows / greedy rows whose argmax changes):")
    for desc, (apply, undo) in variants:
        apply()
        try:
            parts = []
            for c in cases:
                seq = c["prompt"] + c["generated"][:-1]
                logits = last_logits(model, seq)[len(c["prompt"]) - 1:]
                ref = torch.stack(c["rows"])
                diff = float((logits - ref).abs().max())
                changed = int((logits.argmax(-1) != torch.tensor(c["generated"])).sum())
                parts.append(f"{c['name']} {diff:7.3f}/{changed:2d}")
        finally:
            undo()
        log(f"    {desc:42s} " + "  ".join(parts))


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------
def fmt_float(x):
    x = float(x)
    assert math.isfinite(x)
    s = format(x, ".9g")
    assert np.float32(s) == np.float32(x), (s, x)
    return s


def fmt_row(row):
    return "[" + ",".join(fmt_float(v) for v in row.tolist()) + "]"


def fresh_dir(root, name):
    """root/name, emptied (a rerun rewrites a fixture whole)."""
    d = root / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    return d


def seeded_model(cfg, seed):
    """The model of cfg with weights drawn from seed; returns (model, its named tensors)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    init_model(model)
    full = named_tensors(model)
    assert set(full) == expected_names(cfg, with_mtp=False), set(full) ^ expected_names(cfg, with_mtp=False)
    return model, full


def write_golden(path, reference, cases):
    out = ['{"reference": ' + json.dumps(reference) + ', "cases": [']
    for ci, c in enumerate(cases):
        parts = ['  {"name": ' + json.dumps(c["name"]),
                 '   "prompt_ids": ' + json.dumps(c["prompt"])]
        if len(c["prompt"]) < POSITION_LOGITS_MAX_PROMPT:
            parts.append('   "position_logits": [\n' +
                         ",\n".join("    " + fmt_row(r) for r in c["position_logits"]) + "]")
        parts.append('   "generated_ids": ' + json.dumps(c["generated"]))
        parts.append('   "logits": [\n' + ",\n".join("    " + fmt_row(r) for r in c["rows"]) + "]")
        parts.append('   "margins": [' + ",".join(fmt_float(m) for m in c["margins"]) + "]}")
        out.append(",\n".join(parts) + ("," if ci + 1 < len(cases) else ""))
    out.append("]}")
    text = "\n".join(out) + "\n"
    json.loads(text)  # well-formed
    path.write_text(text)


def write_config(path, cfg, keys, quantization=None):
    c = dict(cfg)
    if quantization is not None:
        c["quantization_config"] = quantization
    else:
        c.pop("quantization_config", None)
    expect = [k for k in keys if k != "quantization_config" or quantization is not None]
    assert list(c.keys()) == expect, (set(c) ^ set(expect))
    path.write_text(json.dumps(c, indent=2) + "\n")


def st_save(tensors, path):
    save_file({k: tensors[k].contiguous() for k in sorted(tensors)}, str(path), metadata={"format": "pt"})
    path.chmod(0o644)


def tensor_bytes(t):
    return t.numel() * t.element_size()


def write_sharded(dirpath, tensors, nshards=2):
    """Split in checkpoint order at about equal bytes; a layer may straddle two files."""
    order = sorted(tensors, key=checkpoint_order)
    total = sum(tensor_bytes(tensors[k]) for k in order)
    shards, cur, acc = [[] for _ in range(nshards)], 0, 0
    for k in order:
        if cur + 1 < nshards and acc >= total * (cur + 1) / nshards:
            cur += 1
        shards[cur].append(k)
        acc += tensor_bytes(tensors[k])
    weight_map = {}
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{nshards:05d}.safetensors"
        st_save({k: tensors[k] for k in names}, dirpath / fname)
        for k in names:
            weight_map[k] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dirpath / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return shards


def checkpoint_order(name):
    m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
    if m:
        rest = m.group(2)
        e = re.match(r"mlp\.experts\.(\d+)\.(.*)", rest)
        return (1, int(m.group(1)), (rest, 0, "") if not e else ("mlp.experts", int(e.group(1)), e.group(2)))
    if name == "model.embed_tokens.weight":
        return (0, 0, ("", 0, ""))
    return (2, 0, (name, 0, ""))


# ----------------------------------------------------------------------------------------
# Checks against transformers' own loader
# ----------------------------------------------------------------------------------------
def reload_check(dirpath, cls, model, cases, log):
    """Load the fixture directory with from_pretrained (float32): its logits must equal the
    reference model's bit for bit (proves names, shapes, dtypes and config.json are what
    transformers reads). Also reports how far one full-sequence forward lands from the
    row-by-row recompute of golden.json (a tolerance hint for the runtime's tests)."""
    transformers.logging.set_verbosity_error()
    m = cls.from_pretrained(str(dirpath), dtype=torch.float32, attn_implementation="eager").eval()
    transformers.logging.set_verbosity_warning()
    worst_golden = 0.0
    for c in cases:
        seq = c["prompt"] + c["generated"][:-1]
        got = last_logits(m, seq)
        assert torch.equal(got, last_logits(model, seq)), f"{dirpath.name}: from_pretrained differs"
        rows = got[len(c["prompt"]) - 1:]
        worst_golden = max(worst_golden, float((rows - torch.stack(c["rows"])).abs().max()))
        assert torch.equal(rows.argmax(-1), torch.tensor(c["generated"]))
    log(f"  from_pretrained({dirpath.name}) == reference model exactly; one full-sequence forward vs "
        f"golden rows (row-by-row recompute): max |diff| {worst_golden:.2e}")


def fp8_reload_check(dirpath, model, values, log):
    """Read the FP8 files back, dequantise independently, compare with the reference weights."""
    f = load_file(str(dirpath / "model.safetensors"))
    worst = 0.0
    for k, v in values.items():
        if k.endswith("_scale_inv"):
            continue
        t = f[k]
        if t.dtype == torch.float8_e4m3fn:
            s = f[k + "_scale_inv"]
            assert s.dtype == torch.float32
            assert tuple(s.shape) == (-(-t.shape[0] // 128), -(-t.shape[1] // 128)), (k, s.shape)
            deq = t.float() * s.repeat_interleave(128, 0).repeat_interleave(128, 1)[: t.shape[0], : t.shape[1]]
        else:
            deq = t.float()
        worst = max(worst, float((deq - v).abs().max()))
    msd = model.state_dict()
    for k, t in msd.items():
        assert torch.equal(t, values[k]), k
    log(f"  {dirpath.name}: re-read + dequantised == reference weights (max |diff| {worst:.1e})")
    assert worst == 0.0


# ----------------------------------------------------------------------------------------
def reference_for(model, cfg, values, name, log, entropy_log):
    model.load_state_dict({k: values[k] for k in model.state_dict()}, strict=True)
    probe = RoutingProbe(model, cfg)
    cases = [choose_case(model, cfg, probe, cname, length, log) for cname, length in CASES]
    probe.remove()
    ent = attention_entropy(model, cases[-1]["prompt"])
    entropy_log[name] = ent
    log(f"  attention entropy / uniform (long prompt, rows with >=16 keys): mean {ent['mean']:.3f} "
        f"(p10 {ent['p10']:.3f}, p90 {ent['p90']:.3f}), per layer "
        + ", ".join(f"{x:.3f}" for x in ent["per_layer"])
        + f"; mean max attention weight {ent['max_weight_mean']:.3f}")
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--skip-sensitivity", action="store_true")
    args = ap.parse_args()

    if transformers.__version__ != TRANSFORMERS_VERSION:
        sys.exit(f"transformers {TRANSFORMERS_VERSION} required, found {transformers.__version__}")
    torch.set_num_threads(1)  # reproducible float32 sums, and a light load on shared CI cores
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)

    out_root = args.out
    out_root.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    log(f"transformers {transformers.__version__}, torch {torch.__version__}, "
        f"safetensors {__import__('safetensors').__version__}, numpy {np.__version__}")
    entropy = {}
    summary = {}

    # ---------------- V3 weights (shared by v3_bf16, v3_fp8, v3_sharded) ----------------
    torch.manual_seed(WEIGHT_SEED)
    v3 = build_model(V3_CONFIG)
    init_model(v3)
    full = dict(named_tensors(v3))
    full.update(make_mtp_tensors(V3_CONFIG, v3.config))
    assert set(full) == expected_names(V3_CONFIG, with_mtp=True), \
        set(full) ^ expected_names(V3_CONFIG, with_mtp=True)
    main_names = set(v3.state_dict())
    assert main_names == expected_names(V3_CONFIG, with_mtp=False)

    bf16_stored, bf16_values = round_to(full, torch.bfloat16)
    rot = v3.model.rotary_emb
    d_rope = V3_CONFIG["qk_rope_head_dim"]
    base = 1.0 / (V3_CONFIG["rope_theta"] ** (torch.arange(0, d_rope, 2, dtype=torch.float32) / d_rope))
    log("  transformers' YaRN: inv_freq / base frequency per pair: "
        + " ".join(f"{float(r):.4f}" for r in rot.inv_freq / base)
        + f"; cos/sin factor {rot.attention_scaling}; softmax scale {v3.model.layers[0].self_attn.scaling:.6f} "
        f"(= 48^-0.5 * {v3.model.layers[0].self_attn.scaling * 48 ** 0.5:.6f})")

    # (a) v3_bf16
    log("\n[v3_bf16] DeepseekV3ForCausalLM, BF16 weights")
    d = fresh_dir(out_root, "v3_bf16")
    write_config(d / "config.json", V3_CONFIG, V3_REAL_KEYS)
    st_save(bf16_stored, d / "model.safetensors")
    cases_a = reference_for(v3, V3_CONFIG, bf16_values, "v3_bf16", log, entropy)
    ref_v3 = f"transformers {transformers.__version__} DeepseekV3ForCausalLM, float32, eager"
    write_golden(d / "golden.json", ref_v3, cases_a)
    if not args.skip_sensitivity:
        sensitivity(v3, V3_CONFIG, cases_a, log)
    reload_check(d, DeepseekV3ForCausalLM, v3, cases_a, log)
    summary["v3_bf16"] = cases_a

    # (d) v3_sharded: same tensors and golden as (a)
    log("\n[v3_sharded] the weights of v3_bf16 over two files + index")
    d = fresh_dir(out_root, "v3_sharded")
    write_config(d / "config.json", V3_CONFIG, V3_REAL_KEYS)
    shards = write_sharded(d, bf16_stored)
    straddle = sorted({re.match(r"model\.layers\.(\d+)", n).group(1) for n in shards[0] if n.startswith("model.layers.")}
                      & {re.match(r"model\.layers\.(\d+)", n).group(1) for n in shards[1] if n.startswith("model.layers.")})
    log(f"  shard sizes: {[len(s) for s in shards]} tensors; layer(s) split across files: {straddle}")
    shutil.copyfile(out_root / "v3_bf16" / "golden.json", d / "golden.json")
    reread = {}
    for s in sorted(d.glob("model-*.safetensors")):
        reread.update(load_file(str(s)))
    assert set(reread) == set(bf16_stored) and all(torch.equal(reread[k], bf16_stored[k]) for k in reread)
    reload_check(d, DeepseekV3ForCausalLM, v3, cases_a, log)
    summary["v3_sharded"] = cases_a

    # (b) v3_fp8
    log("\n[v3_fp8] the same weights, linear layers F8_E4M3 with 128x128 block scales")
    fp8_stored, fp8_values = {}, {}
    n_fp8 = 0
    for k, t in bf16_stored.items():
        if FP8_WEIGHT_RE.search(k):
            q, s = fp8_quantize(bf16_values[k])
            fp8_stored[k] = q
            fp8_stored[k + "_scale_inv"] = s
            fp8_values[k] = fp8_dequantize(q, s)
            n_fp8 += 1
        else:
            fp8_stored[k] = t
            fp8_values[k] = bf16_values[k]
    quantised_names = {k for k in bf16_stored if FP8_WEIGHT_RE.search(k)}
    assert not any(re.search(r"(embed_tokens|lm_head|norm|mlp\.gate\.weight|e_score_correction_bias|eh_proj|shared_head)",
                             k) for k in quantised_names)
    rel = max(float((fp8_values[k] - bf16_values[k]).abs().max() / bf16_values[k].abs().max()) for k in quantised_names)
    log(f"  {n_fp8} weights quantised; max |dequant - bf16| / amax: {rel:.3f}")
    d = fresh_dir(out_root, "v3_fp8")
    write_config(d / "config.json", V3_CONFIG, V3_REAL_KEYS, quantization=FP8_QUANTIZATION_CONFIG)
    st_save(fp8_stored, d / "model.safetensors")
    cases_b = reference_for(v3, V3_CONFIG, fp8_values, "v3_fp8", log, entropy)
    write_golden(d / "golden.json", ref_v3, cases_b)
    fp8_reload_check(d, v3, fp8_values, log)
    summary["v3_fp8"] = cases_b

    # (c) v2_lite
    log("\n[v2_lite] DeepseekV2ForCausalLM (V2-Lite style: q_proj, softmax, greedy), F16 weights")
    v2, v2_full = seeded_model(V2_CONFIG, WEIGHT_SEED + 1)
    assert v2.model.layers[1].mlp.gate.topk_method == "greedy"
    v2_stored, v2_values = round_to(v2_full, torch.float16)
    d = fresh_dir(out_root, "v2_lite")
    write_config(d / "config.json", V2_CONFIG, V2_LITE_KEYS)
    st_save(v2_stored, d / "model.safetensors")
    cases_c = reference_for(v2, V2_CONFIG, v2_values, "v2_lite", log, entropy)
    check_v2_routing(v2, V2_CONFIG, cases_c[-1]["prompt"], log)
    write_golden(d / "golden.json", f"transformers {transformers.__version__} DeepseekV2ForCausalLM, float32, eager",
                 cases_c)
    if not args.skip_sensitivity:
        sensitivity(v2, V2_CONFIG, cases_c, log)
    reload_check(d, DeepseekV2ForCausalLM, v2, cases_c, log)
    summary["v2_lite"] = cases_c

    # (e) v3_mla: DeepSeek-V3's attention dimensions
    log("\n[v3_mla] DeepseekV3ForCausalLM with V3's MLA dimensions (kv_lora 512, rope 64, nope 128, v 128), BF16")
    mla, mla_full = seeded_model(V3_MLA_CONFIG, V3_MLA_WEIGHT_SEED)
    mla_stored, mla_values = round_to(mla_full, torch.bfloat16)
    d = fresh_dir(out_root, "v3_mla")
    write_config(d / "config.json", V3_MLA_CONFIG, V3_REAL_KEYS)
    st_save(mla_stored, d / "model.safetensors")
    log(f"  softmax scale {mla.model.layers[0].self_attn.scaling:.6f} "
        f"(= 192^-0.5 * {mla.model.layers[0].self_attn.scaling * 192 ** 0.5:.6f}, as DeepSeek-V3's)")
    cases_e = reference_for(mla, V3_MLA_CONFIG, mla_values, "v3_mla", log, entropy)
    write_golden(d / "golden.json", ref_v3, cases_e)
    if not args.skip_sensitivity:
        sensitivity(mla, V3_MLA_CONFIG, cases_e, log)
    reload_check(d, DeepseekV3ForCausalLM, mla, cases_e, log)
    summary["v3_mla"] = cases_e

    log("\nsummary (min greedy margin per fixture):")
    for name, cases in summary.items():
        log(f"  {name:11s} min margin {min(min(c['margins']) for c in cases):.4f}  "
            + "  ".join(f"{c['name']}:{min(c['margins']):.3f}" for c in cases))
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
             for p in sorted(out_root.iterdir()) if p.is_dir()}
    for k, v in sizes.items():
        log(f"  {k:11s} {v / 1e6:6.2f} MB")
    log(f"  total       {sum(sizes.values()) / 1e6:6.2f} MB")
    (out_root / "generation_log.txt").write_text(
        "Output of scripts/make_fixtures.py (regenerated with the fixtures).\n\n" + "\n".join(lines) + "\n")


def check_v2_routing(model, cfg, prompt, log):
    """transformers' DeepseekV2 gate must route with softmax + greedy top-k, weights s * scaling
    (no renormalisation): recompute the routing independently and compare."""
    gates = [l.mlp.gate for l in model.model.layers if hasattr(l.mlp, "gate")]
    seen = []

    def hook(mod, args, out):
        seen.append((mod, args[0].detach().clone(), out))
    hs = [g.register_forward_hook(hook) for g in gates]
    last_logits(model, prompt)
    for h in hs:
        h.remove()
    for mod, x, (idx, w) in seen:
        x = x.reshape(-1, x.shape[-1]).float()
        s = (x @ mod.weight.float().t()).softmax(-1)
        ew, eidx = s.topk(cfg["num_experts_per_tok"], dim=-1)
        assert torch.equal(idx.sort(-1).values, eidx.sort(-1).values)
        got = torch.gather(s, 1, idx) * cfg["routed_scaling_factor"]
        assert torch.allclose(w, got, rtol=0, atol=0)
    log(f"  V2 routing verified over {len(seen)} MoE layer calls: softmax scores, greedy top-"
        f"{cfg['num_experts_per_tok']}, weights = score * {cfg['routed_scaling_factor']} (no renormalisation)")


if __name__ == "__main__":
    main()
