"""Both stages over tiles as the released inference code runs them: always two stages, the stripped
answer in the stage-2 text, boxes then mask in the render, masks resized with nearest neighbour,
json.loads values handed on unchanged, and the product's departures as options."""
import json
import os

import cv2
import numpy as np
import pytest
from affine import Affine
from PIL import Image, ImageDraw
from rasterio.crs import CRS

from backend.pipeline.detect import detect, load_scene
from backend.pipeline.prompts import stage2_prompt
from backend.pipeline.stages import PipelineOptions, make_view, run_batch, run_tile
from helpers import FillBoxSegmenter, ScriptedReasoner

T = Affine(1, 0, 500_000, 0, -1, 4_057_000)
IMG = np.full((768, 768, 3), 128, np.uint8)

# The stage-2 text as the reference gives it, written out here independently of backend.prompts.
STAGE2 = ('You will be given two images. The first is a map and the second is a corresponding satellite image.'
          'Now some bbox(s) and the results after SAM segmentation for "{q}" have been rendered on these two images.'
          'The found bbox(s) are: {b}.Please add some points appropriately to each bbox to better represent the area '
          'of interest.Output the thinking process in <think> </think> and final answer in <answer> </answer> tags.'
          'i.e., <think> thinking process here </think><answer>[{{"bbox_2d": [bx1,by1,bx2,by2], "points": '
          '[[px1,py1],[px2,py2],[px3,py3]]}}, {{"bbox_2d": [bx3,by3,bx4,by4], "points": [[px4,py4],[px5,py5],'
          '[px6,py6]}}]</answer>')


def _run(reasoner, seg=None, options=None, img=IMG):
    view = make_view(img, img, "school", reasoner, task="class", transform=T, crs=CRS.from_epsg(32650))
    return run_tile(view, reasoner, seg or FillBoxSegmenter(), options)


class RecordingSegmenter(FillBoxSegmenter):
    def __init__(self):
        super().__init__()
        self.prompts = []

    def segment(self, prompts):
        self.prompts.append([(p.box, list(p.points)) for p in prompts])
        return super().segment([type(p)(tuple(np.clip(p.box, 0, 755)), p.points) for p in prompts])


def released_render(image, answer_text, coarse_model_mask, tile_size):
    """The released render, re-implemented from the reference: json.loads boxes drawn first, then the
    mask (model size -> tile size -> model size, cv2 nearest) at (255, 0, 0, 102)."""
    img = Image.fromarray(image).convert("RGBA")
    try:
        data = json.loads(answer_text)
    except ValueError:
        data = []
    draw = ImageDraw.Draw(img)
    for item in data if isinstance(data, list) else []:
        if isinstance(item, dict) and "bbox_2d" in item and len(item["bbox_2d"]) == 4:
            b = item["bbox_2d"]
            try:
                draw.rectangle([(b[0], b[1]), (b[2], b[3])], outline="blue", width=2)
            except Exception:
                pass
    h, w = image.shape[:2]
    m768 = cv2.resize(coarse_model_mask.astype(np.uint8), tile_size, interpolation=cv2.INTER_NEAREST)
    m = cv2.resize(m768, (w, h), interpolation=cv2.INTER_NEAREST) > 0
    overlay = np.zeros((h, w, 4), np.uint8)
    overlay[m] = (255, 0, 0, int(255 * 0.4))
    return np.asarray(Image.alpha_composite(img, Image.fromarray(overlay, "RGBA")).convert("RGB"))


@pytest.mark.parametrize("garbage", ["", "I cannot help with that.", "<answer>[[[", "<answer>null</answer>",
                                     "\x00\xff" * 50])
def test_stage2_always_runs_even_after_an_unusable_stage1(garbage):
    seg = FillBoxSegmenter()
    seen = []
    r = _run(ScriptedReasoner(garbage, lambda v: seen.append(v) or "<answer>[]</answer>"), seg)
    assert seen, "stage 2 was not asked"
    assert not r.final_mask.any() and not r.coarse_mask.any()
    assert seg.embed_calls == 0                       # nothing to segment in either stage
    boxes_text = "" if "<answer>" not in garbage or "</answer>" not in garbage else garbage.split("<answer>")[1].split("</answer>")[0].strip()
    assert r.prompts[1] == STAGE2.format(q="school", b=boxes_text)
    # nothing to draw: the rendered images are the model inputs
    assert np.array_equal(r.images["map_rendered.png"], r.images["map.png"])


def test_stage2_text_carries_the_stripped_answer():
    raw = '\n [{"bbox_2d": [10, 10, 100, 100]},  {"bbox_2d": [200,200,300,300]}] \n'
    r = _run(ScriptedReasoner(f"<think>a</think><answer>{raw}</answer>"))
    assert r.prompts[1] == STAGE2.format(q="school", b=raw.strip()) == stage2_prompt("school", raw.strip())
    assert r.refined and len(r.stage2.items) == 2


def test_unusable_stage2_gives_an_empty_mask_as_released():
    r = _run(ScriptedReasoner('<answer>[{"bbox_2d": [10, 10, 100, 100]}]</answer>', "nonsense"))
    assert r.coarse_mask.any() and not r.final_mask.any() and not r.refined and not r.coarse_kept
    assert "stage 2 answer unusable; tile left empty" in r.notes


def test_keeping_the_coarse_mask_is_an_option_and_says_so():
    r = _run(ScriptedReasoner('<answer>[{"bbox_2d": [10, 10, 100, 100]}]</answer>', "nonsense"),
             options=PipelineOptions(keep_coarse_on_failure=True))
    assert r.final_mask.sum() == 91 * 91 and not r.refined and r.coarse_kept
    assert "stage 2 failed; stage-1 mask kept" in r.notes


def test_render_draws_boxes_first_then_the_mask():
    r = _run(ScriptedReasoner('<answer>[{"bbox_2d": [10, 10, 100, 100]}]</answer>'))
    sat = r.images["satellite_rendered.png"]
    assert tuple(sat[50, 10]) == (0, 0, 255)           # the mask edge moved by the 756 -> 768 -> 756 round trip
    assert tuple(sat[50, 11]) == (102, 0, 153)         # box pixel under the mask: blue, then red over it
    assert tuple(sat[50, 50]) == (179, 77, 77)         # grey 128 under the red mask
    assert tuple(sat[300, 300]) == (128, 128, 128)


def test_json_values_reach_the_segmenter_unclamped_and_unsorted():
    seg = RecordingSegmenter()
    answer = ('<answer>[{"bbox_2d": [700.5, 20, 10.25, 900]}, {"bbox_2d": [1, 2, 3]}, '
              '{"bbox_2d": [5, 5, 50, 50], "points": [[60, 70], [1, 2, 3]]}]</answer>')
    stage2 = '<answer>[{"bbox_2d": [5, 5, 50, 50], "points": [[-4, 900.5]]}]</answer>'
    r = _run(ScriptedReasoner(answer, stage2), seg)
    assert seg.prompts[0] == [((700.5, 20.0, 10.25, 900.0), []), ((5.0, 5.0, 50.0, 50.0), [(60.0, 70.0), (1.0, 2.0)])]
    assert seg.prompts[1] == [((5.0, 5.0, 50.0, 50.0), [(-4.0, 900.5)])]
    assert r.stage1.released and r.stage2.released


def test_tolerant_parsing_is_the_products_net_and_can_be_turned_off():
    python_style = "<answer>[{'bbox_2d': [10, 10, 100, 100]}]</answer>"
    assert _run(ScriptedReasoner(python_style)).coarse_mask.any()
    strict = _run(ScriptedReasoner(python_style), options=PipelineOptions(tolerant_parsing=False))
    assert not strict.coarse_mask.any()


def test_model_coordinates_map_to_tile_pixels_with_nearest_neighbour():
    # 768 px tile -> 756 px model image; model columns 0..377 are tile columns 0..383 (cv2 nearest)
    r = _run(ScriptedReasoner('<answer>[{"bbox_2d": [0, 0, 377, 377]}]</answer>'))
    m = r.mask_on_tile()
    assert r.model_size == (756, 756)
    assert m[:384, :384].all() and not m[384:, :].any() and not m[:, 384:].any()
    assert r.view.transform * (756, 756) == pytest.approx(T * (768, 768))


def test_a_batch_equals_its_batches_of_one():
    answers = ['<answer>[{"bbox_2d": [10, 10, 100, 100]}]</answer>', "junk",
               '<answer>[{"bbox_2d": [300, 300, 500, 600]}, {"bbox_2d": [0, 0, 50, 40]}]</answer>']
    imgs = [np.full((768, 768, 3), v, np.uint8) for v in (90, 128, 200)]

    def reasoner():
        return ScriptedReasoner(lambda v: answers[int(v.sat_image[0, 0, 0] > 100) + int(v.sat_image[0, 0, 0] > 150)])

    def views(rs):
        return [make_view(im, im, "school", rs, tile_id=f"t{i}") for i, im in enumerate(imgs)]

    rs = reasoner()
    batch = run_batch(views(rs), rs, FillBoxSegmenter())
    for b, v in zip(batch, views(rs)):
        one = run_tile(v, rs, FillBoxSegmenter())
        assert one.prompts == b.prompts and one.responses == b.responses
        assert np.array_equal(one.final_mask, b.final_mask)
        assert np.array_equal(one.images["satellite_rendered.png"], b.images["satellite_rendered.png"])


def test_dump_reproduces_the_released_render_and_stage2_text(tmp_path):
    answer = '<think>x</think><answer> [{"bbox_2d": [10.7, 20.2, 300.9, 200]}, {"bbox_2d": [400, 400, 380, 500]}] </answer>'
    img = np.random.default_rng(1).integers(0, 255, (768, 768, 3)).astype(np.uint8)
    r = _run(ScriptedReasoner(answer), img=img)
    from backend.pipeline.stages import dump_tile
    d = dump_tile(r, str(tmp_path))
    meta = json.load(open(os.path.join(d, "tile.json")))
    response = open(os.path.join(d, "stage1_response.txt"), encoding="utf-8").read()
    raw = response.split("<answer>")[1].split("</answer>")[0].strip()
    assert open(os.path.join(d, "stage2_prompt.txt"), encoding="utf-8").read() == STAGE2.format(q="school", b=raw)
    coarse = np.asarray(Image.open(os.path.join(d, "coarse_mask.png"))) > 0
    for name, rendered in (("map.png", "map_rendered.png"), ("satellite.png", "satellite_rendered.png")):
        expect = released_render(np.asarray(Image.open(os.path.join(d, name))), raw, coarse, tuple(meta["tile_size"]))
        assert np.array_equal(np.asarray(Image.open(os.path.join(d, rendered))), expect)


def test_dump_of_a_multi_tile_run_has_every_stage_and_renders_as_released(tmp_path, sample_dir):
    from backend.reasoners.mapreader import MapReader
    from backend.segmenters.grabcut import GrabCutSegmenter

    scene = load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg"))
    assert len(scene.tiles) > 1
    det = detect(scene, "schools", MapReader(), GrabCutSegmenter(), dump_dir=str(tmp_path))
    assert det.entities
    names = {"map.png", "satellite.png", "stage1_prompt.txt", "stage1_response.txt", "coarse_mask.png",
             "map_rendered.png", "satellite_rendered.png", "stage2_prompt.txt", "stage2_response.txt",
             "final_mask.png", "tile.json"}
    dumped = sorted(os.listdir(tmp_path))
    assert dumped == sorted(t.id for t in scene.tiles)
    with_hits = 0
    for d in dumped:
        files = set(os.listdir(tmp_path / d))
        meta = json.load(open(tmp_path / d / "tile.json"))
        assert files == names
        assert meta["crs"] == "EPSG:32650" and len(meta["tile_transform"]) == 6
        size = tuple(meta["model_size"])
        for img in ("map.png", "satellite_rendered.png", "final_mask.png", "coarse_mask.png"):
            assert Image.open(tmp_path / d / img).size == size
        raw = open(tmp_path / d / "stage1_response.txt").read().split("<answer>")[1].split("</answer>")[0].strip()
        coarse = np.asarray(Image.open(tmp_path / d / "coarse_mask.png")) > 0
        expect = released_render(np.asarray(Image.open(tmp_path / d / "map.png")), raw, coarse, tuple(meta["tile_size"]))
        assert np.array_equal(np.asarray(Image.open(tmp_path / d / "map_rendered.png")), expect)
        if meta["stage2"]:
            with_hits += 1
            assert set(meta["seconds"]) >= {"stage1_reasoner", "embedding", "stage2_segmenter"}
    assert with_hits >= 2


def test_cancel_stops_a_multi_tile_run(sample_dir):
    from backend.errors import Cancelled
    from backend.reasoners.mapreader import MapReader

    scene = load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg"))
    seen = []

    def progress(frac, msg):
        seen.append(msg)

    with pytest.raises(Cancelled):
        detect(scene, "parks", MapReader(), FillBoxSegmenter(), progress=progress,
               cancel=lambda: len(seen) >= 2)
    assert len(seen) == 2 and "stage 1" in seen[0]
    assert not any(f"({len(scene.tiles)}/{len(scene.tiles)})" in m for m in seen)   # stopped early
