"""Weights are found, checked before the run folder is made, and never silently ignored: --pretrained
decides the components, Hub ids resolve through the local Hugging Face cache (offline), and a failed
start leaves nothing that blocks the corrected command."""

import json
import os

import pytest

from generation.cli import main
from generation.models.checks import check_sd_folder
from generation.models.hub import find_model
from generation.models.loading import ModelFolderError
from generation.training.config import preset_for
from generation.training.hand_config import HandTrainConfig
from manifests.settings import SettingError

REPO = "handfirst-test/tiny-sd"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from generation.models.loading import build_components, save_components

    return save_components(build_components("tiny", seed=3), str(tmp_path_factory.mktemp("sd") / "sd"))


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch, sd_folder):
    """`REPO` in a temporary Hugging Face cache, in the layout ``hf download`` writes, offline."""
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    shutil.copytree(sd_folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return repo / "snapshots" / COMMIT


def test_a_hub_id_resolves_through_the_local_cache_offline(hf_cache):
    folder = find_model(REPO, "Stable Diffusion folder", "--pretrained")
    assert os.path.samefile(folder, hf_cache)
    assert check_sd_folder(folder).latent_channels == 4


def test_an_id_not_in_the_cache_names_it_and_how_to_fetch_it(hf_cache):
    with pytest.raises(ModelFolderError) as err:
        find_model("someone/not-cached", "Stable Diffusion folder", "--pretrained")
    message = str(err.value)
    assert "'someone/not-cached'" in message and "hf download someone/not-cached" in message
    assert "--allow-download" in message and "\n" not in message


def test_a_missing_path_is_not_taken_for_an_id(tmp_path):
    with pytest.raises(ModelFolderError, match="not a directory"):
        find_model(str(tmp_path / "nothing"), "Stable Diffusion folder", "--pretrained")


def test_pretrained_decides_the_preset(sd_folder, tmp_path):
    assert preset_for(None, sd_folder) == "sd"
    assert preset_for(None, REPO) == "sd"
    assert preset_for(None, None) == "tiny"
    vae_run = tmp_path / "vae"
    vae_run.mkdir()
    (vae_run / "config.json").write_text(json.dumps({"task": "vae", "config": {}}))
    assert preset_for(None, str(vae_run)) == "mini"
    for preset, folder in (("tiny", sd_folder), ("mini", sd_folder), ("sd", str(vae_run))):
        with pytest.raises(SettingError, match=f"--preset {preset} .*drop --preset"):
            preset_for(preset, folder)
    with pytest.raises(SettingError, match="would ignore its weights"):
        HandTrainConfig(manifest=("m",), preset="tiny", pretrained=sd_folder).validate()


def _train_hand(manifest, out, *extra):
    return main(
        [
            "train-hand",
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--checkpoint-every",
            "0",
            "--validate-every",
            "0",
            "--num-validation-poses",
            "1",
            "--validation-steps",
            "1",
            "--resolution",
            "64",
            "--log-level",
            "WARNING",
            *extra,
        ]
    )


@pytest.mark.slow
def test_pretrained_by_id_without_preset_trains_from_the_cached_folder(
    synthetic_manifest, hf_cache, tmp_path
):
    run = tmp_path / "run"
    assert _train_hand(synthetic_manifest, run, "--pretrained", REPO) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["preset"] == "sd" and record["config"]["pretrained"] == REPO
    assert os.path.samefile(record["data"]["components"], hf_cache)


@pytest.mark.slow
def test_a_failed_start_does_not_block_the_corrected_command(synthetic_manifest, sd_folder, tmp_path, capsys):
    run = tmp_path / "run"
    # A wrong path: refused before the run folder is made.
    assert _train_hand(synthetic_manifest, run, "--pretrained", str(tmp_path / "no-such-sd")) == 1
    assert "not a directory" in capsys.readouterr().err
    assert not run.exists()
    # A start that fails after its config.json was written: weights that do not load.
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(sd_folder, broken)
    for name in os.listdir(broken / "unet"):
        if name.endswith(".safetensors"):
            (broken / "unet" / name).write_bytes(b"not weights")
    assert _train_hand(synthetic_manifest, run, "--pretrained", str(broken)) == 1
    assert "handfirst-gen train-hand: error:" in capsys.readouterr().err
    assert (run / "config.json").is_file()
    # The corrected command on the same --out, with no flag.
    assert _train_hand(synthetic_manifest, run, "--pretrained", sd_folder) == 0
    assert os.path.isfile(run / "model_index.json")


def test_folder_checks_name_the_problem(sd_folder, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(sd_folder, bad)
    config = json.loads((bad / "vae" / "config.json").read_text())
    (bad / "vae" / "config.json").write_text(json.dumps({**config, "scaling_factor": -1}))
    with pytest.raises(ModelFolderError, match="scaling_factor"):
        check_sd_folder(str(bad))
    (bad / "vae" / "config.json").write_text(json.dumps({**config, "block_out_channels": [32, 32]}))
    with pytest.raises(ModelFolderError, match="downsamples by 2"):
        check_sd_folder(str(bad))
    for name in os.listdir(bad / "unet"):
        if name != "config.json":
            os.remove(bad / "unet" / name)
    with pytest.raises(ModelFolderError, match="unet/ holds no weights file"):
        check_sd_folder(str(bad))
    shutil.rmtree(bad / "tokenizer")
    with pytest.raises(ModelFolderError, match="lacks subfolder"):
        check_sd_folder(str(bad))
