"""The command line as a user runs it: real files in, files and clear messages out."""
import os
import subprocess
import sys

import pyogrio

from backend.cli import main
from helpers import ROOT


def test_detect_on_the_sample_writes_gpkg_preview_and_iou(tmp_path, sample_dir, capsys):
    out, png = tmp_path / "schools.gpkg", tmp_path / "schools.png"
    rc = main(["detect", "--satellite", os.path.join(sample_dir, "satellite.tif"),
               "--map", os.path.join(sample_dir, "map.gpkg"), "--query", "schools", "--out", str(out),
               "--preview", str(png), "--truth", os.path.join(sample_dir, "truth.gpkg")])
    text = capsys.readouterr().out
    assert rc == 0
    assert "found 3 entities" in text and "IoU against" in text
    iou = float(text.split("IoU against")[1].split(":")[1].split()[0])
    assert iou > 0.9
    info = pyogrio.read_info(str(out))
    assert info["features"] == 3 and "32650" in info["crs"]
    from PIL import Image
    assert Image.open(png).size[0] > 1000


def test_existing_output_and_bad_input_fail_cleanly(tmp_path, sample_dir, capsys):
    out = tmp_path / "x.gpkg"
    out.write_bytes(b"keep me")
    args = ["detect", "--satellite", os.path.join(sample_dir, "satellite.tif"), "--map",
            os.path.join(sample_dir, "map.gpkg"), "--query", "schools", "--out", str(out)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["detect", "--satellite", "nope.tif", "--map", "nope.tif", "--query", "x", "--out",
                 str(tmp_path / "y.gpkg")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_errors_have_no_traceback_in_a_subprocess(tmp_path, sample_dir):
    r = subprocess.run([sys.executable, "-m", "backend", "detect", "--satellite",
                        os.path.join(sample_dir, "satellite.tif"), "--map", os.path.join(sample_dir, "map.tif"),
                        "--query", "Lotus Park", "--task", "name", "--out", str(tmp_path / "o.gpkg")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "vector map" in r.stderr
    assert not (tmp_path / "o.gpkg").exists()


def test_info_is_a_diagnostics_block(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for key in ("socioseg backend", "python", "torch", "transformers", "device", "vvangfaye/SocioReasoner-3B",
                "facebook/sam2-hiera-large"):
        assert key in text


def test_synth_socioseg_layout(tmp_path, capsys):
    assert main(["synth-socioseg", "--out", str(tmp_path), "--count", "2", "--split", "val"]) == 0
    samples = sorted(os.listdir(tmp_path / "val"))
    assert len(samples) == 2
    assert sorted(os.listdir(tmp_path / "val" / samples[0])) == ["map.png", "mask.png", "question.json", "sat.png"]
