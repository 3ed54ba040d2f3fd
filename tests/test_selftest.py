from backend.cli import main


def test_selftest_passes_and_keeps_models(tmp_path, capsys):
    models, dump = tmp_path / "models", tmp_path / "dump"
    assert main(["selftest", "--models-dir", str(models), "--dump", str(dump)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.count("PASS") == 15
    assert (models / "vlm" / "config.json").exists() and (models / "sam2" / "config.json").exists()
    assert (models / "sam" / "sam_vit_tiny.pth").exists()
    assert (models / "sam3" / "config.json").exists() and (dump / "sam3" / "tile_0_0").is_dir()
    assert (dump / "sam2" / "tile_0_0" / "stage2_response.txt").exists()
