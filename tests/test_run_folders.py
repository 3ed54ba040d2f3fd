"""A training run's folder as a model reference (`--reasoner qwen:RUN`): RUN/final, or an adapter on its base.
The real load of both is in test_finetune_loop (a GRPO LoRA run of the tiny model)."""
import json

import pytest

from backend.errors import ModelNotFoundError
from backend.hub import training_output


def _model(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "qwen2_5_vl"}')


def test_a_run_folder_means_its_merged_model(tmp_path):
    _model(tmp_path / "run" / "final")
    (tmp_path / "run" / "adapter").mkdir()
    assert training_output(str(tmp_path / "run")) == (str(tmp_path / "run" / "final"), None)


def test_a_model_folder_and_a_hub_id_stay_as_they_are(tmp_path):
    _model(tmp_path / "m")
    assert training_output(str(tmp_path / "m")) == (str(tmp_path / "m"), None)
    assert training_output("vvangfaye/SocioReasoner-3B") == ("vvangfaye/SocioReasoner-3B", None)
    assert training_output(str(tmp_path / "missing")) == (str(tmp_path / "missing"), None)


def test_an_adapter_means_its_base_plus_the_adapter(tmp_path):
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/sft/final"}))
    assert training_output(str(adapter)) == ("/models/sft/final", str(adapter))
    # a run folder whose final/ is missing (stopped before merging) falls back to its adapter
    assert training_output(str(tmp_path / "run")) == ("/models/sft/final", str(adapter))


def test_an_adapter_without_a_base_says_what_to_pass(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="RUN/final"):
        training_output(str(tmp_path))


def test_preflight_checks_local_sam3_folders_and_run_folders(tmp_path):
    from backend.preflight import check_engines

    with pytest.raises(ModelNotFoundError, match="SAM 3 segmenter.*--segmenter sam3:DIR"):
        check_engines("mapreader", f"sam3:{tmp_path / 'nothing'}")
    with pytest.raises(ModelNotFoundError, match="SAM 3 concept reasoner"):
        check_engines(f"sam3-concept:{tmp_path / 'nothing'}", "grabcut")
    # a run folder whose final/ has no weights is checked as final/
    _model(tmp_path / "run" / "final")
    with pytest.raises(ModelNotFoundError, match="final has config.json but no weights"):
        check_engines(f"qwen:{tmp_path / 'run'}", "grabcut")
