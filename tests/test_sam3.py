"""SAM 3 through transformers with a tiny random SAM 3 of the real classes, saved as facebook/sam3 is:
as the segmenter (Sam3TrackerModel: boxes and points), as the concept baseline (Sam3Model: text),
in training's rollouts and rewards, and its gated default's message."""
import numpy as np
import pytest
import torch

from backend.engines import build_reasoner, build_segmenter, parse_reasoner, parse_segmenter
from backend.errors import InputError, ModelNotFoundError
from backend.segmenters.base import Prompt


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory):
    from backend.selftest.tiny import build_tiny_sam3, save_sam3

    model, processor = build_tiny_sam3(0)
    path = save_sam3(model, processor, str(tmp_path_factory.mktemp("sam3") / "sam3"))
    return path, model


def _image():
    rng = np.random.default_rng(0)
    img = rng.integers(80, 120, (300, 400, 3)).astype(np.uint8)
    img[100:200, 150:300] = (40, 160, 40)
    return img


def test_specs_and_the_default_id():
    assert parse_segmenter("sam3").args == ("facebook/sam3",)
    assert parse_segmenter("SAM3:/x/y").args == ("/x/y",)
    assert parse_reasoner("sam3-concept").args == ("facebook/sam3",)
    with pytest.raises(InputError, match="sam3"):
        parse_segmenter("sam4")


def test_both_classes_load_every_weight_of_the_saved_checkpoint(sam3_dir):
    """The save is the published layout: the tracker's vision backbone is the detector's, renamed on load."""
    from transformers import Sam3Model, Sam3TrackerModel

    path, video = sam3_dir
    tracker, info = Sam3TrackerModel.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert torch.equal(tracker.vision_encoder.backbone.embeddings.patch_embeddings.projection.weight,
                       video.detector_model.vision_encoder.backbone.embeddings.patch_embeddings.projection.weight)
    assert torch.equal(tracker.mask_decoder.iou_prediction_head.proj_out.weight,
                       video.tracker_model.mask_decoder.iou_prediction_head.proj_out.weight)
    detector, info = Sam3Model.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]


def test_segmenter_takes_boxes_and_points_like_sam2(sam3_dir):
    path, _ = sam3_dir
    seg = build_segmenter(f"sam3:{path}", "cpu")
    assert type(seg).__name__ == "Sam3Segmenter" and seg.name == f"sam3:{path}"
    seg.set_image(_image())
    target = Prompt((10, 10, 60, 80), [(30, 30), (40, 50)])
    alone = seg.segment([target])[0]
    crowd = seg.segment([Prompt((150, 100, 299, 199)), target, Prompt((0, 0, 399, 299), [(1, 1), (2, 2)])])
    assert np.array_equal(crowd[1].mask, alone.mask) and crowd[1].score == alone.score
    for s in crowd:
        assert s.mask.shape == (300, 400) and s.mask.dtype == bool and 0.0 <= s.score <= 1.0
    # the same prediction as the model run in one call on the pixels (embedding path = direct path)
    enc = seg.processor(images=_image(), input_boxes=[[[10.0, 10.0, 60.0, 80.0]]],
                        input_points=[[[[30.0, 30.0], [40.0, 50.0]]]], input_labels=[[[1, 1]]], return_tensors="pt")
    with torch.inference_mode():
        out = seg.model(pixel_values=enc["pixel_values"], input_boxes=enc["input_boxes"],
                        input_points=enc["input_points"], input_labels=enc["input_labels"], multimask_output=True)
    best = int(out.iou_scores[0, 0].argmax())
    masks = seg.processor.post_process_masks(out.pred_masks, [[300, 400]])[0]
    assert np.array_equal(masks[0, best].numpy().astype(bool), alone.mask)
    assert seg.embed_calls == 1


def test_segmenter_in_the_pipeline(sam3_dir):
    from affine import Affine

    from backend.pipeline.stages import PipelineOptions, make_view, run_tile
    from helpers import ScriptedReasoner

    path, _ = sam3_dir
    seg = build_segmenter(f"sam3:{path}", "cpu")
    img = _image()
    r = ScriptedReasoner('<answer>[{"bbox_2d": [150, 100, 299, 199]}]</answer>',
                         '<answer>[{"bbox_2d": [150, 100, 299, 199], "points": [[200, 150]]}]</answer>')
    view = make_view(img, img, "school", r, transform=Affine.identity())
    res = run_tile(view, r, seg, PipelineOptions(outline="image"))
    assert res.stage2.ok and res.mask_on_tile().shape == img.shape[:2]
    assert seg.embed_calls == 1


def test_gated_default_says_how_to_get_access(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="gated.*huggingface.co/facebook/sam3.*auth login"):
        build_segmenter("sam3", "cpu")
    with pytest.raises(ModelNotFoundError, match="gated"):
        build_reasoner("sam3-concept", "cpu")
    with pytest.raises(ModelNotFoundError, match="sam2") as e:       # a SAM 2 folder is not a SAM 3
        from backend.selftest.tiny import build_tiny_sam2
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            m, p = build_tiny_sam2()
            m.save_pretrained(d)
            p.save_pretrained(d)
            build_segmenter(f"sam3:{d}", "cpu")
    assert "gated" not in str(e.value)


def test_concept_reasoner_answers_sam3s_instances_on_the_satellite(sam3_dir):
    from transformers import Sam3Model, Sam3Processor

    from backend.pipeline.prompts import parse_answer
    from backend.reasoners.sam3_concept import Sam3ConceptReasoner

    path, _ = sam3_dir
    assert type(build_reasoner(f"sam3-concept:{path}", "cpu")).__name__ == "Sam3ConceptReasoner"
    reasoner = Sam3ConceptReasoner(path, "cpu", threshold=0.0)    # random weights: keep every query
    sat = _image()
    items, masks, scores = reasoner.find(sat, "  School ")
    # what SAM 3 itself gives for the text "school"
    model, proc = Sam3Model.from_pretrained(path).eval(), Sam3Processor.from_pretrained(path)
    inputs = proc(images=sat, text="school", return_tensors="pt")
    with torch.inference_mode():
        out = model(**{k: v for k, v in inputs.items() if k != "original_sizes"})
    want = proc.post_process_instance_segmentation(out, threshold=0.0, mask_threshold=0.5, target_sizes=[(300, 400)])[0]
    kept = [i for i in range(len(want["masks"])) if want["masks"][i].any()]
    assert len(items) == len(kept) > 0
    for it, m, k in zip(items, masks, kept):
        assert np.array_equal(m, want["masks"][k].numpy().astype(bool))
        assert it.box[0] < it.box[2] and it.box[1] < it.box[3]
        assert all(m[int(y), int(x)] for x, y in it.points)

    from affine import Affine

    from backend.pipeline.stages import make_view, run_tile
    from backend.segmenters.grabcut import GrabCutSegmenter

    blank_map = np.zeros_like(sat)          # the map is never read
    view = make_view(blank_map, sat, "school", reasoner, transform=Affine.identity())
    res = run_tile(view, reasoner, GrabCutSegmenter())
    a1 = parse_answer(res.responses[0], 400, 300)
    assert a1.ok and len(a1.items) == len(items)
    assert res.stage2.ok and all(it.points for it in res.stage2.items)
    # with the default map outlines the output masks are SAM 3's own instances
    assert np.array_equal(res.mask_on_tile(), np.logical_or.reduce(masks))


def test_sam3_in_training_rollouts_and_rewards(sam3_dir, tiny_models, town_socioseg):
    """The GRPO option --segmenter sam3:DIR builds the SAM 3 segmenter that renders stage 2 and scores
    the final mask (the real tiny VLM samples the rollouts)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from backend.reasoners.qwen import QwenChat
    from training.config import GRPOOptions, parse
    from training.data import SocioSegData, gt_boxes, model_view
    from training.rollout import RolloutSample, TransformersSampler, two_stage_rollouts

    path, _ = sam3_dir
    options = parse(GRPOOptions, ["--segmenter", f"sam3:{path}", "--data", town_socioseg, "--output",
                                  "/nonexistent/run"], "t", "t")
    seg = build_segmenter(options.segmenter, "cpu")
    assert type(seg).__name__ == "Sam3Segmenter"
    vlm = tiny_models["reasoner"].split(":", 1)[1]
    model, processor = AutoModelForImageTextToText.from_pretrained(vlm).eval(), AutoProcessor.from_pretrained(vlm)
    processor.tokenizer.padding_side = "left"
    chat = QwenChat(processor)
    sample = SocioSegData(town_socioseg, "train").get(0)
    map_m, sat_m, _ = model_view(sample, chat)
    torch.manual_seed(0)
    sampler = TransformersSampler(model, chat, {"do_sample": True, "temperature": 1.0, "max_new_tokens": 96,
                                                "pad_token_id": processor.tokenizer.pad_token_id},
                                  {processor.tokenizer.convert_tokens_to_ids("<|im_end|>")})
    (ro,) = two_stage_rollouts(sampler, seg, [RolloutSample("school", map_m, sat_m, sample.mask,
                                                            gt_boxes(sample.mask))], 2)
    assert len(ro.stage1) == len(ro.stage2) == 2
    assert seg.embed_calls == 1                       # one embedding per sample and step
    assert all(0.0 <= v <= 1.0 for v in ro.mask_ious)
    assert all(set(s.rewards) >= {"format", "accuracy", "length"} for s in ro.stage1 + ro.stage2)
