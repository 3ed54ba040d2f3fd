"""The segmenters on their real code paths (tiny SAM 2 / SAM), and GrabCut's edge cases."""
import numpy as np
import pytest

from backend.engines import build_segmenter
from backend.errors import InputError, ModelNotFoundError
from backend.pipeline.stages import make_view, run_tile
from backend.segmenters.base import Prompt
from backend.segmenters.grabcut import GrabCutSegmenter
from helpers import ScriptedReasoner


def _image():
    rng = np.random.default_rng(0)
    img = rng.integers(80, 120, (300, 400, 3)).astype(np.uint8)
    img[100:200, 150:300] = (40, 160, 40)
    return img


@pytest.mark.parametrize("key", ["sam2", "sam"])
def test_each_object_is_its_own_prediction_whatever_its_neighbours(tiny_models, key):
    seg = build_segmenter(tiny_models[key], "cpu")
    seg.set_image(_image())
    target = Prompt((10, 10, 60, 80), [(30, 30), (40, 50)])
    alone = seg.segment([target])[0]
    crowd = seg.segment([Prompt((150, 100, 299, 199)), target, Prompt((200, 20, 260, 90), [(230, 50)]),
                         Prompt((0, 0, 399, 299), [(1, 1), (2, 2), (3, 3), (4, 4)])])
    assert len(crowd) == 4
    assert np.array_equal(crowd[1].mask, alone.mask) and crowd[1].score == alone.score
    for s in crowd:
        assert s.mask.shape == (300, 400) and s.mask.dtype == bool
        assert 0.0 <= s.score <= 1.0


def test_sam2_picks_the_highest_scoring_multimask(tiny_models, monkeypatch):
    import torch
    seg = build_segmenter(tiny_models["sam2"], "cpu")
    seg.set_image(_image())
    real = seg.model.forward

    def fake_forward(*a, **k):
        out = real(*a, **k)
        masks = torch.full_like(out.pred_masks, -10.0)
        masks[0, 0, 1, 10:20, 10:20] = 10.0      # only candidate 1 has a mask...
        out.pred_masks = masks
        out.iou_scores = torch.tensor([[[0.1, 0.9, 0.2]]])   # ...and the best score
        return out

    monkeypatch.setattr(seg.model, "forward", fake_forward)
    (s,) = seg.segment([Prompt((0, 0, 100, 100))])
    assert s.mask.any() and s.score == pytest.approx(0.9)


@pytest.mark.parametrize("key", ["sam2", "sam"])
def test_embedding_computed_once_per_tile_and_one_call_per_stage(tiny_models, key, monkeypatch):
    from affine import Affine
    from rasterio.crs import CRS

    seg = build_segmenter(tiny_models[key], "cpu")
    encoder = seg.model.get_image_embeddings if key == "sam2" else seg.predictor.model.image_encoder.forward
    calls = {"encode": 0, "segment": 0}

    def counting(*a, **k):
        calls["encode"] += 1
        return encoder(*a, **k)

    if key == "sam2":
        monkeypatch.setattr(seg.model, "get_image_embeddings", counting)
    else:
        monkeypatch.setattr(seg.predictor.model.image_encoder, "forward", counting)
    real_segment = seg.segment

    def counting_segment(prompts):
        calls["segment"] += 1
        return real_segment(prompts)

    monkeypatch.setattr(seg, "segment", counting_segment)
    answer = '<think>t</think><answer>[{"bbox_2d": [10, 10, 200, 200]}, {"bbox_2d": [300, 300, 500, 600]}]</answer>'
    img = np.full((768, 768, 3), 100, np.uint8)
    reasoner = ScriptedReasoner(answer)
    r = run_tile(make_view(img, img, "school", reasoner, transform=Affine(1, 0, 0, 0, -1, 0),
                           crs=CRS.from_epsg(32650)), reasoner, seg)
    assert r.refined
    assert calls == {"encode": 1, "segment": 2}      # one embedding per tile, one segmenter call per stage


def test_missing_checkpoints_say_how_to_get_them(tmp_path):
    with pytest.raises(ModelNotFoundError, match="sam_vit_h_4b8939.pth"):
        build_segmenter(f"sam:vit_h:{tmp_path}/missing.pth")
    with pytest.raises(ModelNotFoundError, match="folder .*nope not found"):
        build_segmenter(f"sam2:{tmp_path}/nope")
    with pytest.raises(InputError, match="model type and a checkpoint"):
        build_segmenter("sam:vit_h")
    with pytest.raises(InputError, match="unknown segmenter"):
        build_segmenter("deeplab")


def test_sam2_from_an_unreachable_hub_id_explains_the_download():
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download"):
        build_segmenter("sam2:facebook/sam2-hiera-large")


def test_grabcut_finds_the_object_in_its_box():
    g = GrabCutSegmenter()
    g.set_image(_image())
    (s,) = g.segment([Prompt((140, 90, 309, 209), [(225, 150)])])
    truth = np.zeros((300, 400), bool)
    truth[100:200, 150:300] = True
    iou = (s.mask & truth).sum() / (s.mask | truth).sum()
    assert iou > 0.9
    assert s.score is None


def test_grabcut_box_touching_every_border():
    img = _image()
    img[:, :] = (40, 160, 40)
    img[:20, :] = (200, 200, 200)
    g = GrabCutSegmenter()
    g.set_image(img)
    (s,) = g.segment([Prompt((0, 0, 399, 299), [(200, 200)])])
    assert s.mask.shape == (300, 400)
    assert s.mask[150:, :].mean() > 0.9        # the green part is kept


def test_grabcut_tiny_box_is_the_filled_box():
    g = GrabCutSegmenter()
    g.set_image(_image())
    (s,) = g.segment([Prompt((10, 10, 13, 14))])
    assert s.mask.sum() == 4 * 5 and s.mask[10:15, 10:14].all()


def test_grabcut_huge_box_is_cut_at_reduced_resolution(monkeypatch):
    import cv2

    img = np.random.default_rng(1).integers(0, 255, (1500, 1500, 3)).astype(np.uint8)
    g = GrabCutSegmenter(max_side=256)
    g.set_image(img)
    sizes = []
    real = cv2.grabCut

    def spy(image, *a, **k):
        sizes.append(image.shape[:2])
        return real(image, *a, **k)

    monkeypatch.setattr(cv2, "grabCut", spy)
    (s,) = g.segment([Prompt((5, 5, 1490, 1490), [(700, 700)])])
    assert s.mask.shape == (1500, 1500)
    assert sizes and max(max(sz) for sz in sizes) <= 256          # the crop was cut at reduced size
    assert not s.mask[:5, :].any() and not s.mask[:, 1495:].any()   # never outside the box
