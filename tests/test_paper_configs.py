"""configs/paper/: every file loads through its command's --config and settings class and validates;
options given on the command line override the file; --dry-run writes nothing."""

import json
import os
from pathlib import Path

import pytest

from manifests.settings import SettingError, read_settings_file

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "configs" / "paper"

# file name prefix -> (command line, subcommand)
COMMANDS = {
    "prep": ("prep", "run"),
    "train-vae": ("gen", "train-vae"),
    "train-hand": ("gen", "train-hand"),
    "train-body": ("gen", "train-body"),
    "generate": ("gen", "generate"),
    "baseline": ("gen", "baseline"),
    "evaluate": ("gen", "evaluate"),
}


def _settings_class(prefix: str):
    from generation.baseline import BaselineConfig
    from generation.evaluate.run import EvalConfig
    from generation.generate import GenerateConfig
    from generation.training.body_config import BodyTrainConfig
    from generation.training.hand_config import HandTrainConfig
    from generation.training.vae_config import VaeTrainConfig
    from prep.config import PrepConfig

    return {
        "prep": PrepConfig,
        "train-vae": VaeTrainConfig,
        "train-hand": HandTrainConfig,
        "train-body": BodyTrainConfig,
        "generate": GenerateConfig,
        "baseline": BaselineConfig,
        "evaluate": EvalConfig,
    }[prefix]


def _prefix(path: Path) -> str:
    return next(p for p in sorted(COMMANDS, key=len, reverse=True) if path.stem.startswith(p))


def _parser(prefix: str):
    cli, name = COMMANDS[prefix]
    if cli == "prep":
        from prep.cli import build_parser

        return build_parser(name)
    from generation.cli import build_parser

    return build_parser(name)[0]


FILES = sorted(PAPER.glob("*.json"))
# Options a command requires besides its settings (the files hold settings only).
REQUIRED = {
    "generate": ["--out", "o"],
    "baseline": ["--from-manifest", "m", "--out", "o"],
    "evaluate": ["--out", "o"],
}


def test_the_recipe_has_a_file_per_command():
    prefixes = {_prefix(p) for p in FILES}
    assert prefixes == set(COMMANDS) - {"train-vae"}  # paper scale starts from SD 1.5's own VAE


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_paper_config_validates_through_its_commands_config_option(path):
    from manifests.settings import from_args

    prefix = _prefix(path)
    cls = _settings_class(prefix)
    data = json.loads(path.read_text())
    assert data["_comment"], "every recipe file says where its values come from"
    args = _parser(prefix).parse_args(["--config", str(path), *REQUIRED.get(prefix, [])])
    config = from_args(cls, args, read_settings_file(args.config))
    if hasattr(config, "resolve") and not getattr(config, "init_from", None):
        config.resolve()
    config.validate()
    for key, value in data.items():
        if not key.startswith("_"):
            got = getattr(config, key)
            assert (list(got) if isinstance(got, tuple) else got) == value, key


def test_the_command_line_overrides_the_file():
    from manifests.settings import from_args
    from prep.commands.run import config_from_args

    args = _parser("prep").parse_args(["--config", str(PAPER / "prep-hagrid.json"), "--workers", "3"])
    config = config_from_args(args)
    assert config.workers == 3 and config.sam_model_type == "vit_h"
    path = PAPER / "train-body.json"
    args = _parser("train-body").parse_args(["--config", str(path), "--steps", "7", "--no-ema"])
    config = from_args(_settings_class("train-body"), args, read_settings_file(args.config))
    assert config.steps == 7 and config.ema is False and config.resolution == 512


def test_a_bad_config_file_is_one_clear_error(tmp_path, capsys):
    from prep.cli import main

    bad = tmp_path / "c.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SettingError, match="expected a JSON object"):
        read_settings_file(str(bad))
    bad.write_text(json.dumps({"no_such_setting": 1}))
    assert main(["run", "--config", str(bad)]) == 2
    assert "unknown PrepConfig setting(s): no_such_setting" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_writes_nothing(synthetic_manifest, tmp_path, capsys, monkeypatch):
    from generation.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    for command in ("train-hand", "train-body"):
        args = [command, "--manifest", str(synthetic_manifest), "--out", str(out), "--dry-run"]
        assert main([*args, "--mixed-precision", "bf16", "--gradient-checkpointing"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan["run_folder"] == {"path": str(out), "use": "new"}
        assert plan["settings"]["preset"] == "tiny" and plan["models"]["trainable_total"] > 0
        assert plan["steps"]["effective_batch"] == 4 and plan["steps"]["training_rows"] > 0
        assert plan["memory_estimate_gib"]["estimate"] is True
    assert os.listdir(tmp_path) == []


def test_dry_run_counts_sd15_sizes_without_weights(tmp_path):
    """The sizes an SD-1.5 run would train, from configs alone: the 860M UNet, widened for stage 1."""
    import torch
    from diffusers import UNet2DConditionModel

    from generation.dry_run import count, training_memory
    from generation.models.hand import HandUNet
    from generation.models.presets import sd15_unet_config
    from generation.training.hand_config import HandTrainConfig

    with torch.device("meta"):
        model = HandUNet.from_unet(UNet2DConditionModel.from_config(sd15_unet_config()))
    n = count(model)
    assert 859_520_964 < n < 860_000_000
    config = HandTrainConfig(manifest=("m",), precision="bf16", gradient_checkpointing=True, batch_size=8)
    memory = training_memory(config, {"trainable_total": n, "frozen_total": 206_000_000}, 64, n)
    assert 16 < memory["weights_grads_optimizer_ema"] < 17  # 20 bytes per trained parameter
    assert memory["total"] < 80


def test_every_command_takes_a_config_file():
    from generation.cli import COMMANDS
    from generation.cli import build_parser as gen_parser
    from prep.cli import build_parser as prep_parser

    parsers = [prep_parser("run")] + [gen_parser(name)[0] for name in COMMANDS]
    for parser in parsers:
        assert "--config" in parser._option_string_actions, parser.prog
