"""The real models' configurations, for benchmarks and checks at real shape with random weights.

Nothing here downloads anything. The Qwen2.5-VL-3B-Instruct configuration is the published
`config.json` of `Qwen/Qwen2.5-VL-3B-Instruct` (written out below, legacy top-level layout and all, and
parsed by the same `Qwen2_5_VLConfig` code that parses the download), so the text model gets its own
36-entry `layer_types`, its mrope sections, 151,936-row tied embedding and the 32-block vision tower.
Only the special-token ids are replaced, by those of the tokenizer that stands in for Qwen's (the
self-test's small BPE tokenizer carries the same special tokens; the embedding keeps its real rows).
SAM 2 is `facebook/sam2-hiera-large` as transformers' converted config has it; SAM 3 is
`facebook/sam3` (transformers' Sam3 config defaults are that checkpoint's shape).
"""
from __future__ import annotations

import copy

# Qwen/Qwen2.5-VL-3B-Instruct, config.json as published.
QWEN2_5_VL_3B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}
QWEN_3B_PARAMS = 3_754_622_976        # Qwen2.5-VL-3B-Instruct's safetensors total (tied embedding once)

# facebook/sam2-hiera-large as transformers' Sam2Config holds it (the rest are Sam2Config's defaults).
SAM2_HIERA_LARGE = {
    "vision_config": {
        "backbone_config": {
            "model_type": "sam2_hiera_det_model", "hidden_size": 144, "num_attention_heads": 2,
            "blocks_per_stage": [2, 6, 36, 4], "embed_dim_per_stage": [144, 288, 576, 1152],
            "num_attention_heads_per_stage": [2, 4, 8, 16], "window_size_per_stage": [8, 4, 16, 8],
            "global_attention_blocks": [23, 33, 43], "window_positional_embedding_background_size": [7, 7],
        },
        "backbone_channel_list": [1152, 576, 288, 144],
    },
}
SAM2_LARGE_PARAMS = 224_400_000       # the SAM 2 paper's 224.4 M for Hiera-L

# Stand-in special tokens: the self-test tokenizer's names for the ids the config refers to.
_TOKEN_FIELDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                 "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
                 "bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>", "pad_token_id": "<|endoftext|>"}


def qwen_3b_config(tokenizer=None, num_hidden_layers: int | None = None):
    """Qwen2.5-VL-3B-Instruct's `Qwen2_5_VLConfig`. With `tokenizer`: its special-token ids replace
    the published ones. `num_hidden_layers` keeps every width and cuts the text model's depth (a
    code-path check where the whole model does not fit; say so wherever it is used)."""
    from transformers import Qwen2_5_VLConfig

    d = copy.deepcopy(QWEN2_5_VL_3B)
    if tokenizer is not None:
        ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in _TOKEN_FIELDS.items()}
        d.update(ids)
        d.pop("vision_token_id")
    if num_hidden_layers is not None:
        d["num_hidden_layers"] = num_hidden_layers
    cfg = Qwen2_5_VLConfig.from_dict(d)
    if tokenizer is not None:
        cfg.text_config.pad_token_id = cfg.pad_token_id = ids["pad_token_id"]
    return cfg


def sam2_large_config():
    from transformers import Sam2Config

    return Sam2Config(**copy.deepcopy(SAM2_HIERA_LARGE))


def sam3_config():
    """facebook/sam3: the detector (text prompts) and the tracker (boxes and points), as published."""
    from transformers import Sam3VideoConfig

    return Sam3VideoConfig()


def on_meta(model_class, config):
    """The model built on the meta device: every shape, no memory."""
    import torch

    with torch.device("meta"):
        return model_class(config)


def parameter_count(model) -> int:
    """Parameters, a tied tensor counted once (as the checkpoint stores it)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def save_qwen(folder: str, size: str = "3b", dtype=None, layers: int | None = None, seed: int = 0,
              max_pixels: int | None = None) -> str:
    """Save a Qwen2.5-VL of `size` ("3b": the published configuration; "tiny": the self-test's) with
    random weights and the self-test's processor (tokenizer, chat template) in `folder`.
    `dtype`: the weights' dtype (bf16 halves the 3B's 15 GB); `layers`: see `qwen_3b_config`;
    `max_pixels`: the processor's pixel budget as saved (a server reads it from the folder)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .tiny import build_tiny_vlm

    tiny, processor = build_tiny_vlm(seed)
    if size == "tiny":
        model = tiny.to(dtype or torch.float32)
    else:
        cfg = qwen_3b_config(processor.tokenizer, layers)
        torch.manual_seed(seed)
        # _from_config with a dtype allocates the weights in it (the default would allocate 15 GB of
        # float32 first)
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype or torch.float32)
        model.generation_config.eos_token_id = cfg.text_config.eos_token_id
        model.generation_config.pad_token_id = cfg.text_config.pad_token_id
    if max_pixels:
        ip = processor.image_processor
        ip.size = {"shortest_edge": min(3136, max_pixels), "longest_edge": max_pixels}
        ip.min_pixels, ip.max_pixels = min(3136, max_pixels), max_pixels
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    return folder


def save_sam3(path: str, seed: int = 0) -> str:
    """facebook/sam3's shape with random weights (3.4 GB of float32) and a stand-in CLIP tokenizer."""
    import torch
    from transformers import Sam3VideoModel

    from .tiny import build_clip_tokenizer, sam3_processor
    from .tiny import save_sam3 as save

    cfg = sam3_config()
    torch.manual_seed(seed)
    model = Sam3VideoModel(cfg).eval()
    return save(model, sam3_processor(build_clip_tokenizer(), cfg.detector_config.image_size), path)


class _UpcastLinear:
    """F.linear on bfloat16 weights computed in float32, one weight at a time, for CPUs without bf16
    units (AVX2: bf16 GEMMs run ~9x slower than float32 here). The backward recomputes the float32
    copy instead of keeping it, so memory stays that of bfloat16 weights plus one layer's copy."""

    @staticmethod
    def function():
        import torch

        class Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, weight, bias):
                ctx.save_for_backward(x, weight, bias)
                with torch.autocast("cpu", enabled=False):     # bf16 autocast would undo the upcast
                    out = torch.nn.functional.linear(x.float(), weight.float(),
                                                     None if bias is None else bias.float())
                return out.to(x.dtype)

            @staticmethod
            def backward(ctx, grad):
                x, weight, bias = ctx.saved_tensors
                return Fn._grads(ctx, x, weight, bias, grad)

            @staticmethod
            @torch.autocast("cpu", enabled=False)
            def _grads(ctx, x, weight, bias, grad):
                g = grad.float()
                gx = gw = gb = None
                if ctx.needs_input_grad[0]:
                    gx = (g @ weight.float()).to(x.dtype)
                if ctx.needs_input_grad[1]:
                    gw = (g.reshape(-1, g.shape[-1]).T @ x.float().reshape(-1, x.shape[-1])).to(weight.dtype)
                if bias is not None and ctx.needs_input_grad[2]:
                    gb = g.reshape(-1, g.shape[-1]).sum(0).to(bias.dtype)
                return gx, gw, gb

        return Fn


def fp32_matmuls_on_cpu(min_rows: int = 8) -> None:
    """Patch nn.Linear so that bfloat16 layers on the CPU multiply in float32 when the input has at
    least `min_rows` rows (prompts, training); single-token decoding stays in bfloat16, which is
    memory-bound and faster without the copy. Benchmarks only: CUDA and float32 layers are untouched."""
    import torch

    if getattr(torch.nn.Linear, "_socioseg_upcast", False):
        return
    fn = _UpcastLinear.function()
    original = torch.nn.Linear.forward

    def forward(self, x):
        w = self.weight
        if w.dtype == torch.bfloat16 and w.device.type == "cpu" and x.numel() // x.shape[-1] >= min_rows:
            return fn.apply(x, w, self.bias)
        return original(self, x)

    torch.nn.Linear.forward = forward
    torch.nn.Linear._socioseg_upcast = True
