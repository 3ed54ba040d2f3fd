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


@pytest.mark.parametrize("h,w,expected", [(768, 768, (756, 756)), (1536, 1536, (1344, 1344)),
                                          (300, 300, (504, 504)), (768, 1024, (756, 1036))])
def test_smart_resize(h, w, expected):
    rh, rw = smart_resize(h, w)
    assert (rh, rw) == expected
    assert rh % 28 == 0 and rw % 28 == 0 and 500 * 500 <= rh * rw <= 1344 * 1344


def test_parse_clean_answer_keeps_raw_text():
    text = '<think>x</think><answer>[{"bbox_2d": [10, 20, 110, 220]}]</answer>'
    a = parse_answer(text, 756, 756)
    assert a.ok and a.raw == '[{"bbox_2d": [10, 20, 110, 220]}]'
    assert a.items[0].box == (10, 20, 110, 220) and not a.warnings


@pytest.mark.parametrize("text,n,warn", [
    ("no tags at all", 0, "no <answer>"),
    ("<answer>not json</answer>", 0, "not a JSON list"),
    ("<answer>[{'bbox_2d': [1, 2, 50, 60]}]</answer>", 1, "Python-style"),
    ('<answer>[{"bbox_2d": [1, 2, 50, 60], "label": "school", "score": 0.9}]</answer>', 1, None),
    ('<answer>{"bbox_2d": [1, 2, 50, 60]}</answer>', 1, None),
    ('<answer>[{"bbox_2d": [60, 70, 1, 2]}]</answer>', 1, None),            # reversed corners
    ('<answer>[{"bbox_2d": [-40, -5, 900, 60]}]</answer>', 1, "clamped"),
    ('<answer>[{"bbox_2d": [5, 5, 5, 60]}]</answer>', 0, "degenerate"),
    ('<answer>[{"bbox_2d": [1, 2, 3]}]</answer>', 0, "no valid bbox_2d"),
    ('<answer>[{"bbox_2d": [1, 2, "a", 4]}]</answer>', 0, "no valid bbox_2d"),
    ('<answer>[{"bbox_2d": [10, 10, 100, 100], "points": [[50, 50], [500, 500]]}]</answer>', 1, "outside"),
    # the unbalanced bracket of the stage-2 example, which a model may imitate
    ('<answer>[{"bbox_2d": [10,10,100,100], "points": [[20,20],[30,30]}]</answer>', 1, "recovered"),
    ('<answer>[{"bbox_2d": [1, 2, 50, 60]}', 0, "no <answer>"),               # cut by the token budget
])
def test_parse_malformed(text, n, warn):
    a = parse_answer(text, 756, 756)
    assert len(a.items) == n
    if warn:
        assert any(warn in w for w in a.warnings), a.warnings
    for it in a.items:
        x1, y1, x2, y2 = it.box
        assert 0 <= x1 < x2 <= 755 and 0 <= y1 < y2 <= 755
        for px, py in it.points:
            assert x1 <= px <= x2 and y1 <= py <= y2


def test_recovered_points_are_kept():
    a = parse_answer('<answer>[{"bbox_2d": [10,10,100,100], "points": [[20,20],[30,30]}]</answer>', 756, 756)
    assert a.items[0].points == [(20.0, 20.0), (30.0, 30.0)]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parser_never_raises_on_text(text):
    a = parse_answer(text, 100, 80)
    assert isinstance(a, ParsedAnswer)


json_number = st.one_of(st.integers(-2000, 2000), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3))
item = st.fixed_dictionaries({"bbox_2d": st.lists(json_number, max_size=5)},
                             optional={"points": st.lists(st.lists(json_number, max_size=3), max_size=4),
                                       "extra": st.text(max_size=5)})


@settings(max_examples=300, deadline=None)
@given(st.lists(item, max_size=6))
def test_parser_output_always_inside_the_image(items):
    text = "<think>t</think><answer>" + json.dumps(items) + "</answer>"
    a = parse_answer(text, 100, 80)
    for it in a.items:
        x1, y1, x2, y2 = it.box
        assert 0 <= x1 < x2 <= 99 and 0 <= y1 < y2 <= 79 and x2 - x1 >= 1 and y2 - y1 >= 1
        for px, py in it.points:
            assert x1 <= px <= x2 and y1 <= py <= y2


def test_format_answer_round_trips():
    a = parse_answer('<answer>[{"bbox_2d": [1, 2, 50, 60], "points": [[3, 4]]}]</answer>', 756, 756)
    again = parse_answer("<answer>" + format_answer(a.items, True) + "</answer>", 756, 756)
    assert again.items == a.items


def test_an_empty_list_is_a_quiet_nothing_here():
    a = parse_answer("<think>none</think><answer>[]</answer>", 756, 756)
    assert a.raw == "[]" and a.items == [] and a.warnings == [] and not a.ok
