"""The real models' shapes on the meta device (no memory): Qwen2.5-VL-3B-Instruct, SAM 2 hiera-large and
SAM 3 build from their published configurations, and the pipeline's image budget, chat template and
generation settings fit them. The benchmarks and scripts/gpu_check.sh build their models from these."""
import numpy as np
import pytest

from backend.selftest import real_shape


@pytest.fixture(scope="module")
def processor():
    from backend.selftest.tiny import build_tiny_vlm

    return build_tiny_vlm()[1]


@pytest.fixture(scope="module")
def qwen3b(processor):
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = real_shape.qwen_3b_config(processor.tokenizer)
    return cfg, real_shape.on_meta(Qwen2_5_VLForConditionalGeneration, cfg)


def test_qwen_3b_is_the_published_configuration(qwen3b):
    cfg, model = qwen3b
    t, v = cfg.text_config, cfg.vision_config
    # the bug this guards against: a 3B built from the tiny config kept its 2-entry layer_types and
    # died with IndexError in Qwen2_5_VLAttention
    assert t.num_hidden_layers == 36 and t.layer_types == ["full_attention"] * 36
    assert len(model.model.language_model.layers) == 36
    assert (t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads) == (2048, 11008, 16, 2)
    assert t.rope_parameters["mrope_section"] == [16, 24, 24] and t.rope_parameters["rope_theta"] == 1e6
    assert t.vocab_size == 151936 and cfg.tie_word_embeddings
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert (v.depth, v.hidden_size, v.out_hidden_size, v.fullatt_block_indexes) == (32, 1280, 2048, [7, 15, 23, 31])
    assert (v.patch_size, v.spatial_merge_size, v.temporal_patch_size, v.window_size) == (14, 2, 2, 112)
    # the published checkpoint's size (safetensors total 7,509,245,952 bytes of bf16)
    assert real_shape.parameter_count(model) == 3_754_622_976


def test_fewer_layers_keep_the_widths(processor):
    cfg = real_shape.qwen_3b_config(processor.tokenizer, num_hidden_layers=3)
    assert cfg.text_config.layer_types == ["full_attention"] * 3
    assert cfg.text_config.hidden_size == 2048 and cfg.vision_config.depth == 32


def test_pipeline_image_budget_and_chat_template_fit_the_3b(qwen3b, processor):
    from backend.pipeline.prompts import MAX_PIXELS, stage1_prompt
    from backend.reasoners.qwen import QwenChat

    cfg, model = qwen3b
    tok = processor.tokenizer
    chat = QwenChat(processor)
    h, w = chat.input_size(768, 768)
    assert (h, w) == (756, 756) and h * w <= MAX_PIXELS
    img = np.zeros((h, w, 3), np.uint8)
    enc = chat.encode([(img, img, stage1_prompt("school"))])
    grid = enc["image_grid_thw"]
    assert grid.tolist() == [[1, 54, 54], [1, 54, 54]]
    merge = cfg.vision_config.spatial_merge_size
    ids = enc["input_ids"][0]
    # the template's image placeholders are the config's image token, one per merged patch
    assert int((ids == cfg.image_token_id).sum()) == int(grid.prod(-1).sum()) // merge ** 2 == 2 * 729
    assert int((ids == cfg.vision_start_token_id).sum()) == 2 == int((ids == cfg.vision_end_token_id).sum())
    assert int(ids.max()) < cfg.text_config.vocab_size
    # the processor's patches are what the 3B's patch embedding takes (3 x 2 x 14 x 14)
    pe = model.model.visual.patch_embed.proj.weight
    assert enc["pixel_values"].shape == (int(grid.prod(-1).sum()), pe[0].numel())
    assert enc["pixel_values"].shape[1] == 3 * cfg.vision_config.temporal_patch_size * cfg.vision_config.patch_size ** 2
    text = chat.chat_text("x")
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("greedy", [False, True])
def test_generation_settings_apply_to_the_3b(qwen3b, greedy):
    from transformers import GenerationConfig

    from backend.reasoners.qwen import GenerationSettings

    cfg, _ = qwen3b
    gc = GenerationConfig.from_model_config(cfg.text_config)
    gc.update(**GenerationSettings(do_sample=not greedy).kwargs())
    gc.validate(strict=True)
    for tid in (cfg.text_config.eos_token_id, cfg.text_config.pad_token_id):
        assert 0 <= tid < cfg.text_config.vocab_size


def test_sam2_hiera_large():
    from transformers import Sam2Model, Sam2VideoConfig, Sam2VideoModel

    cfg = real_shape.sam2_large_config()
    model = real_shape.on_meta(Sam2Model, cfg)
    image = real_shape.parameter_count(model)
    video = real_shape.parameter_count(real_shape.on_meta(Sam2VideoModel, Sam2VideoConfig(**cfg.to_dict())))
    # 224.4 M in the SAM 2 paper counts the memory modules the image model does not have
    assert video == pytest.approx(real_shape.SAM2_LARGE_PARAMS, rel=0.002)
    assert 210e6 < image < video
    assert sum(cfg.vision_config.backbone_config.blocks_per_stage) == 48
    side = cfg.prompt_encoder_config.image_size // cfg.prompt_encoder_config.patch_size
    assert cfg.vision_config.backbone_feature_sizes[-1] == [side, side] == [64, 64]


def test_sam3_shapes():
    from transformers import Sam3Model, Sam3TrackerModel

    cfg = real_shape.sam3_config()
    assert cfg.detector_config.image_size == cfg.tracker_config.image_size == 1008
    tracker = real_shape.parameter_count(real_shape.on_meta(Sam3TrackerModel, cfg))
    detector = real_shape.parameter_count(real_shape.on_meta(Sam3Model, cfg))
    # facebook/sam3 is about 848 M parameters: the detector, plus the tracker's heads on its backbone
    assert 800e6 < detector < 880e6 and 400e6 < tracker < detector
