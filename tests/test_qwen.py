"""The Qwen2.5-VL reasoner on its real code path, with the tiny fitted model."""
import numpy as np
import pytest
import torch

from backend.engines import build_reasoner, parse_reasoner
from backend.errors import ModelNotFoundError
from backend.pipeline.prompts import stage1_prompt
from backend.reasoners.qwen import DEFAULT_VLM, GenerationSettings, QwenReasoner


def test_default_reasoner_spec_names_the_released_model():
    assert parse_reasoner("qwen").args == (DEFAULT_VLM,) and DEFAULT_VLM == "vvangfaye/SocioReasoner-3B"


def test_chat_is_one_user_turn_map_then_satellite_then_text(tiny_models):
    r = build_reasoner(tiny_models["reasoner"], "cpu")
    text = r.chat_text(stage1_prompt("school"))
    assert text.count("<|im_start|>user") == 1 and text.endswith("<|im_start|>assistant\n")
    assert "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>" + \
        stage1_prompt("school") + "<|im_end|>" in text
    # the map must be the first image: its pixels come first in pixel_values
    m = np.zeros((756, 756, 3), np.uint8)
    s = np.full((756, 756, 3), 255, np.uint8)
    enc = r.encode([(m, s, "x")])
    half = enc["pixel_values"].shape[0] // 2
    assert enc["pixel_values"][:half].mean() < enc["pixel_values"][half:].mean()
    assert enc["image_grid_thw"].tolist() == [[1, 54, 54], [1, 54, 54]]


def test_processor_resize_mismatch_is_caught(tiny_models):
    r = build_reasoner(tiny_models["reasoner"], "cpu")
    img = np.zeros((710, 710, 3), np.uint8)           # not a multiple of 28: the processor would resize
    with pytest.raises(RuntimeError, match="coordinates"):
        r.encode([(img, img, "x")])


def test_float32_on_cpu_and_greedy_is_deterministic(tiny_models):
    r = build_reasoner(tiny_models["reasoner"], "cpu", GenerationSettings(max_new_tokens=40, do_sample=False))
    assert r.model.dtype == torch.float32 and r.device == "cpu"
    m = np.full((756, 756, 3), 90, np.uint8)
    a = r.generate(m, m, stage1_prompt("school"))
    b = r.generate(m, m, stage1_prompt("school"))
    assert a == b


def test_released_sampling_is_the_default_with_an_explicit_repetition_penalty():
    k = GenerationSettings().kwargs()
    assert k["do_sample"] is True and k["max_new_tokens"] == 2048
    assert (k["temperature"], k["top_p"], k["top_k"], k["repetition_penalty"]) == (1.0, 0.8, 100, 1.0)
    greedy = GenerationSettings(do_sample=False).kwargs()
    assert greedy["do_sample"] is False and greedy["repetition_penalty"] == 1.0


def test_explicit_repetition_penalty_overrides_the_checkpoints_default(tiny_models, monkeypatch):
    r = build_reasoner(tiny_models["reasoner"], "cpu", GenerationSettings(max_new_tokens=5))
    r.model.generation_config.repetition_penalty = 1.05      # as Qwen's generation_config.json ships
    seen = {}
    real = r.model.generate

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(r.model, "generate", spy)
    m = np.full((756, 756, 3), 90, np.uint8)
    r.generate(m, m, "x")
    assert seen["repetition_penalty"] == 1.0 and seen["top_k"] == 100


def test_a_seed_makes_sampling_repeatable(tiny_models):
    from backend.reasoners.qwen import QwenReasoner

    r = build_reasoner(tiny_models["reasoner"], "cpu", GenerationSettings(max_new_tokens=30, seed=7))
    again = QwenReasoner.from_loaded(r.model, r.processor, GenerationSettings(max_new_tokens=30, seed=7))
    m = np.full((756, 756, 3), 90, np.uint8)
    first = [r.generate(m, m, "x"), r.generate(m, m, "y")]       # seeded once: one random stream per run
    assert first == [again.generate(m, m, "x"), again.generate(m, m, "y")]
    assert r.generation_record()["seed"] == 7 and r.generation_record()["top_p"] == 0.8


def test_batched_generation_equals_batches_of_one_when_greedy(tiny_models):
    from backend.selftest.run import fitting_examples

    r = build_reasoner(tiny_models["reasoner"], "cpu", GenerationSettings(max_new_tokens=60, do_sample=False))
    examples = fitting_examples(tiny_models["scene"])
    pairs = [(m, s, p) for m, s, p, _ in examples[:2]] + [(examples[0][0], examples[0][1], "short")]
    batched = r.generate_batch(pairs)
    assert batched == [r.generate(*p) for p in pairs]


def test_fitted_tiny_model_answers_in_the_released_format(tiny_models):
    from backend.pipeline.prompts import parse_answer
    scene = tiny_models["scene"]
    from backend.selftest.run import fitting_examples
    m, s, prompt, target = fitting_examples(scene)[0]
    r = build_reasoner(tiny_models["reasoner"], "cpu", GenerationSettings(do_sample=False))
    out = r.generate(m, s, prompt)
    assert out == target and parse_answer(out, 756, 756).ok


def test_missing_model_says_how_to_get_it(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        build_reasoner(f"qwen:{tmp_path}/missing")
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download vvangfaye/SocioReasoner-3B"):
        build_reasoner("qwen")


def test_replies_are_decoded_twice_as_released(tiny_models):
    # the released code segments the answer decoded without special tokens, and renders / quotes in
    # the stage-2 text the one decoded with them (tokenizer.batch_decode(..., skip_special_tokens=False))
    from backend.pipeline.prompts import parse_answer
    from backend.reasoners.qwen import decode_reply

    r = build_reasoner(tiny_models["reasoner"], "cpu", GenerationSettings(max_new_tokens=30))
    tok = r.processor.tokenizer
    ids = tok('<think>x</think><answer>[{"bbox_2d": [1, 2, 30, 40]}<|vision_end|>]</answer>')["input_ids"]
    ids += [tok.convert_tokens_to_ids("<|im_end|>")] + [tok.pad_token_id] * 3
    reply = decode_reply(tok, torch.tensor(ids))
    assert reply.text == '<think>x</think><answer>[{"bbox_2d": [1, 2, 30, 40]}]</answer>'
    assert reply.shown_text == reply.text.replace("}]", "}<|vision_end|>]") + "<|im_end|>"
    a = parse_answer(reply.text, 756, 756, shown=reply.shown_text)
    assert [it.box for it in a.items] == [(1, 2, 30, 40)] and a.boxes == []
    assert a.stage2_boxes_text == '[{"bbox_2d": [1, 2, 30, 40]}<|vision_end|>]'
    # the reasoner's replies carry both
    m = np.full((756, 756, 3), 90, np.uint8)
    from backend.reasoners.base import TileView
    one = r.stage1(TileView("school", None, m, m), "x")
    assert one.shown_text is not None and one.text == tok.decode(tok(one.shown_text)["input_ids"],
                                                                 skip_special_tokens=True)


def test_an_answer_cut_at_the_response_budget_says_so(tiny_models):
    """In process as through a model server: an answer that ran out of tokens carries the note that
    detection's summary and error name (--max-new-tokens); one that ended on its own does not."""
    from backend.selftest.run import fitting_examples

    map_rgb, sat, prompt, _ = fitting_examples(tiny_models["scene"])[0]
    short = build_reasoner(tiny_models["reasoner"], "cpu", GenerationSettings(max_new_tokens=4, do_sample=False))
    reply, = short.reply_batch([(map_rgb, sat, prompt)])
    assert reply.notes == ["answer cut at the response budget of 4 tokens (--max-new-tokens)"], reply
    whole = QwenReasoner.from_loaded(short.model, short.processor, GenerationSettings(max_new_tokens=600, do_sample=False))
    reply, = whole.reply_batch([(map_rgb, sat, prompt)])
    assert "</answer>" in reply.text and reply.notes == [], reply
