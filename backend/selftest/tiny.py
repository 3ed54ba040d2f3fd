"""Tiny models of the real classes, built from configs with no download (self-test and tests).

- a Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`) with a BPE tokenizer trained here that carries the
  Qwen special tokens, and the Qwen2.5-VL chat template; it can be fitted briefly so that it answers in
  the released model's format (otherwise random weights stop the pipeline after stage 1);
- a SAM 2 (`Sam2Model` + `Sam2Processor`) with a four-stage Hiera of width 16;
- a SAM (segment-anything `Sam`, model type `vit_tiny`) with a one-block ViT encoder;
- a SAM 3 (`Sam3VideoModel`, saved as `facebook/sam3` is: `Sam3TrackerModel` and `Sam3Model` load it)
  of width 32 with a CLIP tokenizer trained here.
They are saved like real checkpoints and loaded back through the same code users run.
"""
from __future__ import annotations

import logging
import os
import time
from functools import partial

from ..pipeline.prompts import stage1_prompt, stage2_prompt
from ..resources import resource

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]


def _quiet_transformers():
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def build_tokenizer(extra_text: list[str] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    corpus = [stage1_prompt("school"), stage2_prompt("school", '[{"bbox_2d": [1, 2, 3, 4]}]'),
              "system\nYou are a helpful assistant.", "user\n", "assistant\n",
              '<think>Found 2 candidates.</think><answer>[{"bbox_2d": [120, 45, 300, 410], '
              '"points": [[200, 100], [210, 300]]}]</answer>', *extra_text]
    corpus += [str(i) for i in range(1000)]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return Qwen2Tokenizer(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          unk_token=None, bos_token=None)


def build_tiny_vlm(seed: int = 0, extra_text: list[str] = ()):
    """(model, processor) of a ~0.2 M-parameter Qwen2.5-VL with the real classes."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    _quiet_transformers()
    tok = build_tokenizer(extra_text)
    with open(resource("tiny", "qwen2_5_vl_chat_template.jinja"), encoding="utf-8") as f:
        template = f.read()
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=template)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 3, 3]},
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         bos_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model, processor


def supervised_batch(chat, examples, device="cpu"):
    """Inputs and labels for (map, sat, prompt, target) examples: loss on the target tokens only."""
    tok = chat.processor.tokenizer
    pairs = [(m, s, p) for m, s, p, _ in examples]
    prompt_enc = chat.encode(pairs)
    full_texts = [chat.chat_text(p) + t + "<|im_end|>" for _, _, p, t in examples]
    images = [im for m, s, _ in pairs for im in (m, s)]
    from ..reasoners.qwen import to_pil
    enc = chat.processor(text=full_texts, images=[to_pil(i) for i in images], return_tensors="pt",
                         padding=True)
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    plen = prompt_enc["attention_mask"].sum(dim=1)
    pad_left = tok.padding_side == "left"
    for i in range(labels.shape[0]):
        start = (labels.shape[1] - int(enc["attention_mask"][i].sum())) if pad_left else 0
        labels[i, start:start + int(plen[i])] = -100
    enc["labels"] = labels
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in enc.items()}


def fit_vlm(model, processor, examples, max_steps: int = 120, lr: float = 1e-2, log_every: int = 20) -> int:
    """Fit the tiny VLM until greedy decoding reproduces every target (or `max_steps`); returns steps."""
    import torch

    from ..reasoners.qwen import QwenChat

    chat = QwenChat(processor)
    batch = supervised_batch(chat, examples)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    step = 0
    for step in range(1, max_steps + 1):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % log_every == 0 or loss.item() < 0.02:
            log.info("tiny VLM fit step %d: loss %.4f", step, loss.item())
            if loss.item() < 0.05 and _reproduces(model, chat, examples):
                break
    model.eval()
    return step


def _reproduces(model, chat, examples) -> bool:
    import torch

    model.eval()
    try:
        for m, s, p, target in examples:
            enc = chat.encode([(m, s, p)])
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=len(chat.processor.tokenizer(target)["input_ids"]) + 8,
                                     do_sample=False)
            text = chat.processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            if text != target:
                return False
        return True
    finally:
        model.train()


def build_tiny_sam2(seed: int = 0):
    """(model, processor) of a SAM 2 with a width-16 Hiera."""
    import torch
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    _quiet_transformers()
    backbone = dict(model_type="sam2_hiera_det_model", hidden_size=16, embed_dim_per_stage=[16, 32, 64, 128],
                    blocks_per_stage=[1, 1, 2, 1], num_attention_heads_per_stage=[1, 1, 1, 1],
                    global_attention_blocks=[3], window_size_per_stage=[8, 4, 14, 7])
    cfg = Sam2Config(vision_config=dict(backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16],
                                        fpn_hidden_size=32),
                     prompt_encoder_config=dict(hidden_size=32),
                     mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2))
    torch.manual_seed(seed)
    return Sam2Model(cfg).eval(), Sam2Processor(image_processor=Sam2ImageProcessor())


SAM3_IMAGE = 112      # the tiny SAM 3's input size: 8 x 8 patches of 14 px
CLIP_CORPUS = ["school", "park", "hospital", "university", "church", "stadium", "market", "cemetery",
               "a", "the", "of", "and"]


def build_clip_tokenizer():
    """A CLIP tokenizer (CLIP's normaliser, pre-tokenizer and `</w>` word ends) over a BPE trained here."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tk = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator([" ".join(CLIP_CORPUS)] * 3, trainers.BpeTrainer(
        vocab_size=400, end_of_word_suffix="</w>", special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe = json.loads(tk.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe["merges"]]
    return CLIPTokenizer(vocab=bpe["vocab"], merges=merges)


def sam3_processor(tokenizer, image_size: int):
    from transformers import Sam3ImageProcessor, Sam3Processor

    return Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": image_size, "width": image_size}),
                         tokenizer=tokenizer)


def build_tiny_sam3(seed: int = 0):
    """(model, processor) of a SAM 3 laid out as `facebook/sam3` is (`Sam3VideoModel`: the text-prompted
    detector and the box/point tracker on one vision backbone), width 32, 112 px input."""
    import torch
    from transformers import Sam3VideoConfig, Sam3VideoModel

    _quiet_transformers()
    tok = build_clip_tokenizer()
    vit = dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, image_size=SAM3_IMAGE, patch_size=14, window_size=4, global_attn_indexes=[1],
               pretrain_image_size=56)
    side = SAM3_IMAGE // 14
    vision = dict(model_type="sam3_vision_model", backbone_config=vit, fpn_hidden_size=32,
                  backbone_feature_sizes=[[4 * side] * 2, [2 * side] * 2, [side] * 2])
    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    detector = dict(
        vision_config=vision,
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, projection_dim=32,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        geometry_encoder_config=dict(num_layers=1, **small), detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=8, **small),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2))
    tracker = dict(image_size=SAM3_IMAGE, vision_config=vision,
                   prompt_encoder_config=dict(hidden_size=32, image_size=SAM3_IMAGE, patch_size=14),
                   mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32))
    torch.manual_seed(seed)
    model = Sam3VideoModel(Sam3VideoConfig(detector_config=detector, tracker_config=tracker)).eval()
    return model, sam3_processor(tok, SAM3_IMAGE)


def save_sam3(model, processor, path: str) -> str:
    """Save like the `facebook/sam3` checkpoint, so that `Sam3TrackerModel` and `Sam3Model` both load it.
    The weights are written from the module's own names: transformers 5.24's `save_pretrained` of a
    `Sam3VideoModel` doubles the tracker's prefix (`tracker_model.tracker_model.`), which no loader reads."""
    from safetensors.torch import save_model

    import glob

    model.save_pretrained(path)
    for f in glob.glob(os.path.join(glob.escape(path), "model*.safetensors*")):
        os.remove(f)
    save_model(model, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    processor.save_pretrained(path)
    return path


def register_tiny_sam() -> None:
    """Make `sam:vit_tiny:CHECKPOINT` loadable: a one-block, 32-wide ViT encoder, never a useful
    segmenter, kept out of the production registry until the self-test asks for it."""
    from segment_anything.build_sam import _build_sam

    from ..segmenters.sam import EXTRA_ARCHITECTURES

    EXTRA_ARCHITECTURES["vit_tiny"] = partial(_build_sam, encoder_embed_dim=32, encoder_depth=1,
                                              encoder_num_heads=1, encoder_global_attn_indexes=[0])


def build_tiny_sam(path: str, seed: int = 0) -> str:
    """Save a `vit_tiny` segment-anything checkpoint at `path` (and register the architecture)."""
    import torch

    from ..segmenters.sam import _registry

    register_tiny_sam()
    torch.manual_seed(seed)
    model = _registry()["vit_tiny"](checkpoint=None)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def save_models(models_dir: str, vlm_examples=None, seed: int = 0) -> dict[str, str]:
    """Build, fit (when examples are given) and save all four; returns their engine specs."""
    t = time.perf_counter()
    os.makedirs(models_dir, exist_ok=True)
    sam2, sam2_proc = build_tiny_sam2(seed)
    sam2_dir = os.path.join(models_dir, "sam2")
    sam2.save_pretrained(sam2_dir)
    sam2_proc.save_pretrained(sam2_dir)
    build_tiny_sam(os.path.join(models_dir, "sam", "sam_vit_tiny.pth"), seed)
    save_sam3(*build_tiny_sam3(seed), os.path.join(models_dir, "sam3"))
    extra = [t for ex in (vlm_examples or []) for t in (ex[2], ex[3])]
    vlm, proc = build_tiny_vlm(seed, extra)
    if vlm_examples:
        steps = fit_vlm(vlm, proc, vlm_examples)
        log.info("tiny VLM fitted in %d steps", steps)
    vlm_dir = os.path.join(models_dir, "vlm")
    vlm.save_pretrained(vlm_dir)
    proc.save_pretrained(vlm_dir)
    log.info("tiny models saved to %s in %.1f s", models_dir, time.perf_counter() - t)
    return model_specs(models_dir)


def model_specs(models_dir: str) -> dict[str, str]:
    """The engine specs of the models save_models keeps in `models_dir` (the self-test keeps them in
    its --models-dir)."""
    j = os.path.join
    return {"reasoner": f"qwen:{j(models_dir, 'vlm')}", "sam2": f"sam2:{j(models_dir, 'sam2')}",
            "sam": f"sam:vit_tiny:{j(models_dir, 'sam', 'sam_vit_tiny.pth')}", "sam3": f"sam3:{j(models_dir, 'sam3')}"}
