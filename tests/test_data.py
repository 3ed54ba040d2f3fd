"""SocioSeg reading: raw folders, parquet (Hugging Face layout), corrupt samples, GT boxes."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from training.data import SocioSegData, gt_boxes, model_view


def _write(root, sid, query="school", size=(64, 80), level=None):
    d = root / "test" / sid
    d.mkdir(parents=True)
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(d / "map.png")
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(d / "sat.png")
    m = np.zeros(size, np.uint8)
    m[5:20, 10:30] = 255
    Image.fromarray(m).save(d / "mask.png")
    q = {"problem": query}
    if level:
        q["task"] = level
    (d / "question.json").write_text(json.dumps(q))
    return d


def test_raw_layout_with_a_corrupt_and_an_incomplete_sample(tmp_path, caplog):
    _write(tmp_path, "a", level="Socio-class")
    bad = _write(tmp_path, "b")
    (bad / "sat.png").write_bytes(b"not a png")
    gone = _write(tmp_path, "c")
    (gone / "mask.png").unlink()
    data = SocioSegData(str(tmp_path), "test")
    got = list(data.samples())
    assert [s.id for s in got] == ["a"] and got[0].level == "class"
    assert set(data.skipped) == {"b", "c"}
    assert got[0].mask.sum() == 15 * 20


def test_parquet_hub_layout(tmp_path):
    import datasets

    def png(arr):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    m = np.zeros((32, 32), np.uint8)
    m[:10, :10] = 255
    rgb = np.zeros((32, 32, 3), np.uint8)
    feats = datasets.Features({"id": datasets.Value("string"), "problem": datasets.Value("string"),
                               "map_image": datasets.Image(), "sat_image": datasets.Image(),
                               "mask_label": datasets.Image()})
    ds = datasets.Dataset.from_dict({"id": ["x1", "x2"], "problem": ["Jinan Zoo", "park"],
                                     "map_image": [png(rgb), png(rgb)], "sat_image": [png(rgb), png(rgb)],
                                     "mask_label": [png(m), png(np.zeros((16, 16), np.uint8))]}, features=feats)
    path = str(tmp_path / "test.parquet")
    ds.to_parquet(path)
    data = SocioSegData(path, "test")
    got = list(data.samples())
    assert [s.id for s in got] == ["x1"] and got[0].query == "Jinan Zoo"
    assert list(data.skipped) == ["1"]               # the mask of x2 has the wrong size


def test_gt_boxes_as_released_and_the_model_view():
    m = np.zeros((768, 768), bool)
    m[100:200, 300:500] = True
    m[700:703, 0:3] = True                            # contour area 4 px: below the floor of 10
    m[400:405, 600:606] = True                        # contour area 20 px: kept
    assert sorted(gt_boxes(m)) == [[300, 100, 500, 200], [600, 400, 606, 405]]   # exclusive ends
    from training.data import Sample
    s = Sample("s", "q", None, np.zeros((768, 768, 3), np.uint8), np.zeros((768, 768, 3), np.uint8), m)
    map_m, sat_m, mask_m = model_view(s)
    assert mask_m.shape == (756, 756) and map_m.shape == (756, 756, 3) and sat_m.shape == (756, 756, 3)


def test_ground_truth_is_any_nonzero_grey(tmp_path):
    d = _write(tmp_path, "a")
    m = np.zeros((64, 80), np.uint8)
    m[0:4, 0:5] = 1                                   # faint anti-aliased edge: still ground truth
    m[10:12, 10:12] = 255
    Image.fromarray(m).save(d / "mask.png")
    sample = SocioSegData(str(tmp_path), "test").get(0)
    assert sample.mask.sum() == 20 + 4


def test_unreachable_hub_id_says_what_to_give(tmp_path):
    with pytest.raises(RuntimeError, match="raw layout"):
        SocioSegData("vvangfaye/SocioSeg", "test")
