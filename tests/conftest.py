import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from backend.resources import SAMPLE_DIR  # noqa: E402



@pytest.fixture(scope="session")
def sample_dir():
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def selftest_run(tmp_path_factory):
    """`python -m backend selftest --models-dir M --dump D`, once per session: its exit code and
    printed report (test_selftest.py checks them), and the tiny models it builds and keeps, which
    the other tests use (building them is most of its minute)."""
    import contextlib
    import io

    from backend.cli import main

    root = tmp_path_factory.mktemp("selftest")
    models, dump = root / "models", root / "dump"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["selftest", "--models-dir", str(models), "--dump", str(dump)])
    return {"rc": rc, "out": out.getvalue(), "models": models, "dump": dump}


@pytest.fixture(scope="session")
def tiny_models(selftest_run):
    """Tiny Qwen2.5-VL (fitted to answer on the sample tile), SAM 2, SAM and SAM 3, saved like real
    ones: the self-test's (backend.selftest.tiny.save_models with the sample tile's examples)."""
    from backend.selftest.run import sample_scene
    from backend.selftest.tiny import model_specs

    m = selftest_run["models"]
    if not (m / "vlm" / "config.json").exists():
        pytest.fail(f"the self-test did not leave its models in {m}:\n{selftest_run['out']}")
    return {**model_specs(str(m)), "scene": sample_scene()}


@pytest.fixture(scope="session")
def plugin_pkg(tmp_path_factory):
    """The repository imported as the installed plugin package `socioseg` (as QGIS imports it)."""
    import importlib
    import sys

    from helpers import ROOT

    parent = tmp_path_factory.mktemp("plugins")
    os.symlink(ROOT, parent / "socioseg")
    sys.path.insert(0, str(parent))
    return importlib.import_module("socioseg")


@pytest.fixture(scope="session")
def town_socioseg(tiny_models, tmp_path_factory):
    """The self-test's sample tile written as a one-sample SocioSeg split (raw layout), query 'school'."""
    import json

    import numpy as np
    from PIL import Image

    from backend.evaluation.truth import truth_mask_for

    scene = tiny_models["scene"]
    root = tmp_path_factory.mktemp("socioseg_town")
    for split in ("train", "val"):
        d = root / split / "town_0"
        d.mkdir(parents=True)
        satellite, map_image, _ = scene.whole()     # the scene reads its pixels from the files
        Image.fromarray(map_image).save(d / "map.png")
        Image.fromarray(satellite).save(d / "sat.png")
        mask = truth_mask_for(os.path.join(SAMPLE_DIR, "truth.gpkg"), scene.grid, "school", None)
        Image.fromarray(mask.astype(np.uint8) * 255).save(d / "mask.png")
        (d / "question.json").write_text(json.dumps({"problem": "school", "task": "class"}))
    return str(root)
