import json
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.pipeline.prompts import (ParsedAnswer, format_answer, parse_answer, smart_resize, stage1_prompt,
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
item = st.fixed_dictionaries({"bbox_2d": st.lists(json_number, max_size=5)},
                             optional={"points": st.lists(st.lists(json_number, max_size=3), max_size=4),
                                       "extra": st.text(max_size=5)})


def released_objects(answer: list) -> list:
    """The reference's rule, written out independently: list items that are dicts with a 4-long
    bbox_2d; points read as [p[0], p[1]] (an unreadable point skips the object); numeric values only."""
    out = []
    for obj in answer:
        if not isinstance(obj, dict):
            continue
        box = obj.get("bbox_2d", [])
        try:
            points = [[p[0], p[1]] for p in obj.get("points", [])]
        except (TypeError, IndexError, KeyError):
            continue
        numbers = box + [v for p in points for v in p] if isinstance(box, list) else [None]
        if not isinstance(box, list) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            continue
        out.append((tuple(float(v) for v in box), [tuple(float(v) for v in p) for p in points]))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(item, max_size=6))
def test_parser_equals_the_released_rule_on_any_json(items):
    text = "<think>t</think><answer>" + json.dumps(items) + "</answer>"
    a = parse_answer(text, 100, 80)
    assert a.released and [(it.box, it.points) for it in a.items] == released_objects(items)


def test_format_answer_round_trips():
    a = parse_answer('<answer>[{"bbox_2d": [1, 2, 50, 60], "points": [[3, 4]]}]</answer>', 756, 756)
    again = parse_answer("<answer>" + format_answer(a.items, True) + "</answer>", 756, 756)
    assert again.items == a.items


def test_an_empty_list_is_a_quiet_nothing_here():
    a = parse_answer("<think>none</think><answer>[]</answer>", 756, 756)
    assert a.raw == "[]" and a.items == [] and a.warnings == [] and not a.ok
