import json
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.pipeline.prompts import (Item, ParsedAnswer, format_answer, parse_answer, smart_resize, stage1_prompt,
                                     stage2_prompt)

from helpers import REFERENCE

STAGE1 = ("You will be given two images. The first is a map and the second is a corresponding satellite image."
          "Please find 'school' with bboxs.Compare the difference between object(s) and find the most closely "
          "matched object(s).Output the thinking process in <think> </think> and final answer in <answer> "
          "</answer> tags. Please use English.Output the bbox(es) in JSON format.i.e., <think>thinking process "
          'here </think><answer>[{"bbox_2d": [bx1,by1,bx2,by2]}, {"bbox_2d": [bx3,by3,bx4,by4]}]</answer>')
STAGE2 = ("You will be given two images. The first is a map and the second is a corresponding satellite image."
          'Now some bbox(s) and the results after SAM segmentation for "school" have been rendered on these two '
          'images.The found bbox(s) are: [{"bbox_2d": [1, 2, 30, 40]}].Please add some points appropriately to '
          "each bbox to better represent the area of interest.Output the thinking process in <think> </think> "
          "and final answer in <answer> </answer> tags.i.e., <think> thinking process here </think><answer>"
          '[{"bbox_2d": [bx1,by1,bx2,by2], "points": [[px1,py1],[px2,py2],[px3,py3]]}, {"bbox_2d": '
          '[bx3,by3,bx4,by4], "points": [[px4,py4],[px5,py5],[px6,py6]}]</answer>')


def test_prompts_byte_for_byte():
    assert stage1_prompt("school") == STAGE1
    assert stage2_prompt("school", '[{"bbox_2d": [1, 2, 30, 40]}]') == STAGE2


@pytest.mark.skipif(not os.path.exists(REFERENCE), reason="shared reference not beside the checkout")
def test_prompts_match_the_reference_document():
    text = open(REFERENCE, encoding="utf-8").read()
    blocks = re.findall(r"### Stage-[12] text.*?\n```\n(.*?)\n```", text, re.S)
    assert len(blocks) == 2
    assert stage1_prompt("QUERYX") == blocks[0].replace("{QUERY}", "QUERYX")
    assert stage2_prompt("QUERYX", "BOXESX") == blocks[1].replace("{QUERY}", "QUERYX").replace("{BOXES}", "BOXESX")


@pytest.mark.parametrize("h,w,expected", [(768, 768, (756, 756)), (1536, 1536, (756, 756)),
                                          (300, 300, (308, 308)), (768, 1024, (644, 868)), (40, 30, (84, 56))])
def test_smart_resize_uses_the_released_pixel_budget(h, w, expected):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

    # what the released code applies: min_pixels 56 * 56, max_pixels 768 * 768 (its YAML's 1344 * 1344
    # is dropped when the config is read)
    assert smart_resize(h, w) == expected == hf_smart_resize(h, w, factor=28, min_pixels=3136, max_pixels=589824)


def test_parse_clean_answer_keeps_raw_text():
    text = '<think>x</think><answer>[{"bbox_2d": [10, 20, 110, 220]}]</answer>'
    a = parse_answer(text, 756, 756)
    assert a.ok and a.raw == '[{"bbox_2d": [10, 20, 110, 220]}]'
    assert a.items[0].box == (10, 20, 110, 220) and not a.warnings


@pytest.mark.parametrize("text,boxes", [
    # json.loads reads these: the items are exactly the released ones, values unchanged
    ('<answer>[{"bbox_2d": [1, 2, 50, 60], "label": "school", "score": 0.9}]</answer>', [(1, 2, 50, 60)]),
    ('<answer>[{"bbox_2d": [60, 70, 1, 2]}]</answer>', [(60, 70, 1, 2)]),          # reversed corners kept
    ('<answer>[{"bbox_2d": [-40, -5, 900, 60.5]}]</answer>', [(-40, -5, 900, 60.5)]),  # not clamped
    ('<answer>[{"bbox_2d": [5, 5, 5, 60]}]</answer>', [(5, 5, 5, 60)]),
    ('<answer>[{"bbox_2d": [1, 2, 3]}, {"bbox_2d": [1, 2, "a", 4]}, {"points": [[1, 2]]}, 7]</answer>', []),
    ('<answer>{"bbox_2d": [1, 2, 50, 60]}</answer>', []),                          # not a list: nothing
    ('<answer> [] </answer>', []),
])
def test_json_answers_are_read_exactly_as_released(text, boxes):
    a = parse_answer(text, 756, 756)
    assert a.released and [it.box for it in a.items] == boxes


def test_points_go_on_as_given_and_a_malformed_point_skips_its_object():
    a = parse_answer('<answer>[{"bbox_2d": [10, 10, 100, 100], "points": [[50, 50], [500, 500, 7]]}, '
                     '{"bbox_2d": [1, 1, 9, 9], "points": [3]}]</answer>', 756, 756)
    assert [(it.box, it.points) for it in a.items] == [((10, 10, 100, 100), [(50, 50), (500, 500)])]


@pytest.mark.parametrize("text,n,warn", [
    ("no tags at all", 0, "no <answer>"),
    ("<answer>not json</answer>", 0, "not a JSON list"),
    ("<answer>[{'bbox_2d': [-40, 2, 900, 60]}]</answer>", 1, "Python-style"),
    # the unbalanced bracket of the stage-2 example, which a model may imitate
    ('<answer>[{"bbox_2d": [10,10,100,100], "points": [[20,20],[30,30]}]</answer>', 1, "recovered"),
    ('<answer>[{"bbox_2d": [1, 2, 50, 60]}', 0, "no <answer>"),               # cut by the token budget
])
def test_the_tolerant_net_salvages_what_json_rejects_and_keeps_it_in_the_image(text, n, warn):
    a = parse_answer(text, 756, 756)
    assert len(a.items) == n and not a.released
    assert any(warn in w for w in a.warnings), a.warnings
    for it in a.items:
        x1, y1, x2, y2 = it.box
        assert 0 <= x1 < x2 <= 755 and 0 <= y1 < y2 <= 755
        for px, py in it.points:
            assert x1 <= px <= x2 and y1 <= py <= y2
    assert parse_answer(text, 756, 756, tolerant=False).items == []


def test_recovered_points_are_kept():
    a = parse_answer('<answer>[{"bbox_2d": [10,10,100,100], "points": [[20,20],[30,30]}]</answer>', 756, 756)
    assert a.items[0].points == [(20.0, 20.0), (30.0, 30.0)]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parser_never_raises_on_text(text):
    a = parse_answer(text, 100, 80)
    assert isinstance(a, ParsedAnswer)


json_number = st.one_of(st.integers(-2000, 2000), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3))
# what a sampled model may also write: true/false, null, integers beyond 64 bits, NaN / Infinity (json.loads
# reads them), nested lists
odd_scalar = st.one_of(st.booleans(), st.none(), st.integers(2 ** 62, 2 ** 70), st.integers(-2 ** 70, -2 ** 62),
                       st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e9]))
json_value = st.one_of(json_number, odd_scalar, st.lists(st.one_of(json_number, odd_scalar), max_size=2))
item = st.fixed_dictionaries({"bbox_2d": st.one_of(st.lists(json_number, max_size=5), st.lists(json_value, max_size=5),
                                                   odd_scalar)},
                             optional={"points": st.one_of(st.lists(st.lists(json_number, max_size=3), max_size=4),
                                                           st.lists(st.lists(json_value, max_size=3), max_size=3),
                                                           odd_scalar),
                                       "extra": st.text(max_size=5)})
answer_list = st.lists(st.one_of(item, item, item, json_value), max_size=6)


def released_objects(answer: list) -> list:
    """The released code, read independently (seg_worker.parse_visual_prompt_from_json_s2, segment_v4_*,
    SegInferStrategy.segment, SAM2ImagePredictor._prep_prompts): the (box, points) prompts that reach a
    SAM 2 prediction."""
    import torch

    out = []
    for obj in answer:
        try:
            if not isinstance(obj, dict):
                continue
            box = obj.get("bbox_2d", [])
            points = [[p[0], p[1]] for p in obj.get("points", [])]
            if not (isinstance(box, list) and len(box) == 4):
                continue
        except Exception:
            continue
        prompt = {}
        try:
            prompt["box"] = np.array(box)
            if points:
                prompt["point_coords"] = np.array(points)
        except Exception:
            pass
        if not prompt:
            continue
        try:    # the predictor's first steps; any error skips the object
            b = torch.as_tensor(prompt["box"], dtype=torch.float)
            pc = torch.as_tensor(prompt["point_coords"], dtype=torch.float) if "point_coords" in prompt else None
        except Exception:
            continue
        # a box of another shape (four lists) or points nested deeper: not followed here (see README)
        if b.shape != (4,) or (pc is not None and pc.dim() != 2):
            continue
        out.append((tuple(b.tolist()), [] if pc is None else [tuple(p) for p in pc.tolist()]))
    return out


def as_sam_sees(items) -> list:
    """Items in the float32 the segmenter computes in (as the released predictor's tensors)."""
    f32 = lambda vs: tuple(float(v) for v in np.asarray(vs, np.float32))   # noqa: E731
    return [(f32(it.box), [f32(p) for p in it.points]) for it in items]


def released_render_boxes(answer_text: str) -> list:
    """The released `render_image`'s box list, read independently."""
    bboxes = []
    try:
        bbox_data = json.loads(answer_text)
        if isinstance(bbox_data, list):
            for item in bbox_data:
                if isinstance(item, dict) and "bbox_2d" in item and len(item["bbox_2d"]) == 4:
                    bboxes.append(item["bbox_2d"])
    except (json.JSONDecodeError, TypeError):
        bboxes = []
    return bboxes


def _same(a, b) -> bool:
    return repr(a) == repr(b)     # NaN-safe and type-exact (True is not 1 for the render)


@settings(max_examples=400, deadline=None)
@given(answer_list)
def test_parser_equals_the_released_code_on_any_json(items):
    text = "<think>t</think><answer>" + json.dumps(items) + "</answer>"
    a = parse_answer(text, 100, 80)
    assert a.released and _same(as_sam_sees(a.items), released_objects(items))
    assert _same(a.boxes, released_render_boxes(json.dumps(items)))
    assert a.stage2_boxes_text == json.dumps(items)


def test_a_bbox_2d_without_length_leaves_the_stage2_images_without_any_box():
    for bad in ("null", "7", "true", "1.5"):
        a = parse_answer('<answer>[{"bbox_2d": [10, 10, 100, 100]}, {"bbox_2d": %s}]</answer>' % bad, 756, 756)
        assert [it.box for it in a.items] == [(10, 10, 100, 100)]      # the segmenter still gets the first
        assert a.boxes == [] and any("no box is drawn" in w for w in a.warnings)


def test_a_ragged_point_leaves_the_box_alone():
    a = parse_answer('<answer>[{"bbox_2d": [10, 10, 100, 100], "points": [[50, 50], [520, []]]}]</answer>', 756, 756)
    assert [(it.box, it.points) for it in a.items] == [((10, 10, 100, 100), [])]
    assert any("segmented alone" in w for w in a.warnings)


def test_true_and_false_are_coordinates_1_and_0():
    a = parse_answer('<answer>[{"bbox_2d": [true, false, 50, 60], "points": [[true, 30]]}]</answer>', 756, 756)
    assert [(it.box, it.points) for it in a.items] == [((1, 0, 50, 60), [(1, 30)])]
    assert a.boxes == [[True, False, 50, 60]] and any("1/0" in w for w in a.warnings)


@pytest.mark.parametrize("big", [2 ** 64, 10 ** 30, -(2 ** 64)])
def test_integers_beyond_64_bits_skip_their_object(big):
    a = parse_answer('<answer>[{"bbox_2d": [%d, 2, 50, 60]}, {"bbox_2d": [1, 2, 50, 60], "points": [[%d, 5]]}, '
                     '{"bbox_2d": [1, 2, 3, 4]}]</answer>' % (big, big), 756, 756)
    assert [it.box for it in a.items] == [(1, 2, 3, 4)]


def test_nan_and_infinity_reach_the_segmenter_and_sam_gives_no_mask(tmp_path):
    from backend.pipeline.stages import SegmenterSession, segment_items
    from backend.segmenters.grabcut import GrabCutSegmenter
    from backend.segmenters.sam2 import Sam2Segmenter
    from backend.selftest.tiny import build_tiny_sam2

    a = parse_answer('<answer>[{"bbox_2d": [NaN, 2, 50, 60]}, {"bbox_2d": [1, 2, Infinity, 60]}, '
                     '{"bbox_2d": [1, 2, 50, 60], "points": [[-Infinity, 3]]}, {"bbox_2d": [1e999, 2, 50, 60]}]'
                     '</answer>', 64, 64)
    assert len(a.items) == 4 and any("non-finite" in w for w in a.warnings)
    # what the release's SAM makes of them: no mask (NaN spreads through the attention)
    model, processor = build_tiny_sam2()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    sam2 = Sam2Segmenter(str(tmp_path), "cpu")
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    sam2.set_image(image)
    assert [s.mask.any() for s in sam2.segment(a.items)] == [False] * 4
    # the pipeline gives that answer without asking (GrabCut could not take the numbers at all)
    for seg in (sam2, GrabCutSegmenter()):
        session = SegmenterSession(seg)
        segs = segment_items(session, session.handle(image), a.items + [Item((5, 5, 40, 40), [])])
        assert [s.mask.any() for s in segs[:4]] == [False] * 4
        assert (segs[4].mask == seg.segment([Item((5, 5, 40, 40), [])])[0].mask).all()


def test_a_box_far_outside_the_image_goes_on_as_released_with_a_warning():
    a = parse_answer('<answer>[{"bbox_2d": [-5000, -5000, 99999, 99999]}, {"bbox_2d": [700, 5, 760, 60]}]</answer>',
                     756, 756)
    assert [it.box for it in a.items] == [(-5000, -5000, 99999, 99999), (700, 5, 760, 60)]
    assert [w for w in a.warnings if "far beyond" in w] == [
        "item 0: box [-5000, -5000, 99999, 99999] reaches far beyond the 756x756 image; as released it goes to "
        "the segmenter as given"]
    a = parse_answer('<answer>[{"bbox_2d": [800, 800, 900, 900]}]</answer>', 756, 756)
    assert any("far beyond" in w for w in a.warnings)


def test_answers_are_cut_to_max_objects_with_a_warning():
    from backend.pipeline.prompts import MAX_OBJECTS

    many = [{"bbox_2d": [i % 700, 1, i % 700 + 10, 20]} for i in range(5000)]
    a = parse_answer("<answer>" + json.dumps(many) + "</answer>", 756, 756)
    assert len(a.items) == len(a.boxes) == MAX_OBJECTS
    assert json.loads(a.stage2_boxes_text) == many[:MAX_OBJECTS]
    assert any(f"5000 objects; only the first {MAX_OBJECTS}" in w for w in a.warnings)
    t = parse_answer("<answer>[" + ", ".join("{'bbox_2d': [1, 2, 30, 40]}" for _ in range(5000)) + "]</answer>",
                     756, 756)
    assert len(t.items) == MAX_OBJECTS and not t.released      # the tolerant net too
    assert len(parse_answer("<answer>" + json.dumps(many) + "</answer>", 756, 756, max_objects=None).items) == 5000
    from backend.reasoners.mapreader import MapReader
    assert MapReader.max_objects is None        # the map reader lists every place its map shows
    small = [{"bbox_2d": [1, 2, 30, 40]}] * MAX_OBJECTS
    assert parse_answer("<answer>" + json.dumps(small) + "</answer>", 756, 756).stage2_boxes_text == json.dumps(small)


def test_render_and_stage2_text_read_the_answer_with_special_tokens():
    # the released code segments the answer decoded without special tokens, but renders and
    # quotes the one decoded with them (batch_decode(..., skip_special_tokens=False))
    shown = '<think>t</think><answer>[{"bbox_2d": [1, 2, 30, 40]}<|box_end|>]</answer><|im_end|>'
    plain = '<think>t</think><answer>[{"bbox_2d": [1, 2, 30, 40]}]</answer>'
    a = parse_answer(plain, 756, 756, shown=shown)
    assert [it.box for it in a.items] == [(1, 2, 30, 40)] and a.released
    assert a.boxes == [] and a.stage2_boxes_text == '[{"bbox_2d": [1, 2, 30, 40]}<|box_end|>]'
    same = parse_answer(plain, 756, 756)
    assert same.boxes == [[1, 2, 30, 40]] and same.stage2_boxes_text == '[{"bbox_2d": [1, 2, 30, 40]}]'


def test_format_answer_round_trips():
    a = parse_answer('<answer>[{"bbox_2d": [1, 2, 50, 60], "points": [[3, 4]]}]</answer>', 756, 756)
    again = parse_answer("<answer>" + format_answer(a.items, True) + "</answer>", 756, 756)
    assert again.items == a.items


def test_an_empty_list_is_a_quiet_nothing_here():
    a = parse_answer("<think>none</think><answer>[]</answer>", 756, 756)
    assert a.raw == "[]" and a.items == [] and a.warnings == [] and not a.ok
