def test_selftest_passes_and_keeps_models(selftest_run):
    # the run itself is conftest's session fixture: its models are the other tests' tiny models
    models, dump, out = selftest_run["models"], selftest_run["dump"], selftest_run["out"]
    assert selftest_run["rc"] == 0, out
    assert "FAIL" not in out and out.count("PASS") == 15
    assert (models / "vlm" / "config.json").exists() and (models / "sam2" / "config.json").exists()
    assert (models / "sam" / "sam_vit_tiny.pth").exists()
    assert (models / "sam3" / "config.json").exists() and (dump / "sam3" / "tile_0_0").is_dir()
    assert (dump / "sam2" / "tile_0_0" / "stage2_response.txt").exists()
