"""The one settings mechanism (`manifests.settings`) and the configs built on it: every numeric
setting has a declared range, `validate()` refuses values outside it through the Python API and the
CLIs alike (before any work), and hand-kept mirrors of registries match the registries."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

import pytest

from manifests.settings import SettingError, Settings, add_arguments, from_args, setting, setting_like


@dataclass
class Toy(Settings):
    sigma: float = setting(1.5, "a width", gt=0)
    size: int | None = setting(None, "a side", ge=1, le=64)
    mode: str = setting("a", "what", choices=("a", "b"))
    lazy: str = setting("x", "choices from a registry", choices=lambda: ("x", "y"))
    groups: tuple[str, ...] = setting(("p",), "groups", choices=("p", "q"))
    flag: bool = setting(False, "on or off")
    table: dict = setting(default_factory=dict, help="structured", cli=False)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sigma": math.nan}, r"sigma \(--sigma\) must be a finite number, got nan"),
        ({"sigma": math.inf}, "must be a finite number, got inf"),
        ({"sigma": 0}, r"sigma \(--sigma\) must be > 0, got 0"),
        ({"sigma": "1"}, "must be a number, got '1'"),
        ({"size": 0}, r"size \(--size\) must be >= 1, got 0"),
        ({"size": 65}, "must be <= 64, got 65"),
        ({"size": 2.5}, "must be an integer, got 2.5"),
        ({"size": True}, "must be an integer, got True"),
        ({"mode": "c"}, "must be one of a, b; got 'c'"),
        ({"lazy": "z"}, "must be one of x, y; got 'z'"),
        ({"groups": ("p", "r")}, "must be one of p, q; got 'r'"),
        ({"flag": 1}, "must be true or false, got 1"),
        ({"mode": None}, r"mode \(--mode\) must be set"),
    ],
)
def test_validate_refuses_values_outside_the_declaration(changes, message):
    with pytest.raises(SettingError, match=message):
        dataclasses.replace(Toy(), **changes).validate()


def test_validate_accepts_the_defaults_and_values_in_range():
    assert Toy().validate() == Toy()
    Toy(sigma=1e-3, size=64, mode="b", lazy="y", groups=("q", "p"), flag=True).validate()


def test_from_dict_refuses_unknown_keys_and_non_objects():
    with pytest.raises(SettingError, match="unknown Toy setting"):
        Toy.from_dict({"sigmaa": 2})
    with pytest.raises(SettingError, match="must be a JSON object, got list"):
        Toy.from_dict([1])
    assert Toy.from_dict(Toy(sigma=2.0).to_dict()) == Toy(sigma=2.0)


def test_cli_options_are_built_from_the_fields():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy)
    options = {a.dest: a for a in parser._actions}
    assert "table" not in options  # cli=False
    assert options["lazy"].choices == ("x", "y")
    assert "(default: 1.5; > 0)" in options["sigma"].help
    args = parser.parse_args(["--sigma", "2", "--groups", "q", "p", "--flag"])
    assert from_args(Toy, args) == Toy(sigma=2.0, groups=("q", "p"), flag=True)
    assert from_args(Toy, parser.parse_args([])) == Toy()  # defaults come from the dataclass, not argparse


def test_setting_like_copies_default_help_and_range():
    @dataclass
    class Other(Settings):
        width: float = setting_like(Toy, "sigma")

    assert Other().width == 1.5
    with pytest.raises(SettingError, match=r"width \(--width\) must be > 0"):
        Other(width=-1.0).validate()


def _config_classes():
    from generation.baseline import BaselineConfig
    from generation.commands.sample_body import SampleBodyConfig
    from generation.commands.sample_hand import SampleHandConfig
    from generation.evaluate.run import EvalConfig
    from generation.generate import GenerateConfig
    from generation.pipelines.blend_config import BlendConfig
    from generation.training.body_config import BodyTrainConfig
    from generation.training.hand_config import HandTrainConfig
    from generation.training.vae_config import VaeTrainConfig
    from manifests.commands.card import CardConfig
    from manifests.commands.preview import PreviewConfig
    from manifests.commands.score import ScoreConfig
    from manifests.commands.stats import StatsConfig
    from manifests.commands.validate import ValidateConfig
    from prep.config import PrepConfig

    return [
        PrepConfig,
        HandTrainConfig,
        BodyTrainConfig,
        VaeTrainConfig,
        GenerateConfig,
        EvalConfig,
        BlendConfig,
        BaselineConfig,
        SampleHandConfig,
        SampleBodyConfig,
        ValidateConfig,
        StatsConfig,
        PreviewConfig,
        ScoreConfig,
        CardConfig,
    ]


def test_every_numeric_setting_declares_its_range_and_every_setting_its_help():
    unbounded = []
    for cls in _config_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            tp = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
            numeric = tp[0] in (int, float)
            declared = f.metadata.get("choices") or any(k in f.metadata for k in ("ge", "gt", "le", "lt"))
            if numeric and not declared:
                unbounded.append(f"{cls.__name__}.{f.name}")
    assert unbounded == []


def _just_outside(f: dataclasses.Field):
    """A value just outside the first bound `f` declares, or None when it declares none."""
    for key, step in (("ge", -1), ("gt", -1), ("le", 1), ("lt", 1)):
        if key in f.metadata:
            return f.metadata[key] + step
    return None


def test_each_config_validates_its_defaults_and_refuses_each_bound_crossed():
    needs = {
        "HandTrainConfig": {"manifest": "m"},
        "BodyTrainConfig": {"manifest": "m"},
        "VaeTrainConfig": {"manifest": "m"},
        "BaselineConfig": {"pretrained": "sd", "controlnet": "openpose"},
        "PreviewConfig": {"out": "sheet.png"},
        "ScoreConfig": {"truth": "truth.json"},
    }
    crossed = 0
    for cls in _config_classes():
        config = cls(**needs.get(cls.__name__, {}))
        assert config.validate() is config
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            bad = _just_outside(f)
            if bad is None or typing.get_origin(hints[f.name]) in (tuple, list):
                continue
            with pytest.raises(SettingError, match=rf"^{f.name}\b"):
                dataclasses.replace(config, **{f.name: bad}).validate()
            crossed += 1
    assert crossed > 100  # every bounded number of every settings class


# --- registries and their mirrors -------------------------------------------------------------------


def test_blend_mode_names_are_the_blending_registry():
    from generation.pipelines.blend_config import BLEND_MODE_NAMES
    from generation.pipelines.blending import BLEND_MODES

    assert set(BLEND_MODE_NAMES) == set(BLEND_MODES)


def test_prep_choices_are_the_registries():
    from segment_anything import sam_model_registry

    from manifests.settings import field_choices
    from prep.config import MASK_METHOD_CHOICES, SAM_MODEL_TYPES, PrepConfig
    from prep.masks import MASK_METHODS
    from prep.sources import SOURCES

    fields = {f.name: f for f in dataclasses.fields(PrepConfig)}
    assert field_choices(fields["format"]) == tuple(SOURCES)
    assert set(MASK_METHOD_CHOICES) - {"auto", "none"} == set(MASK_METHODS)
    assert set(SAM_MODEL_TYPES) == set(sam_model_registry) - {"default"}


def test_hand_model_choices_are_the_mask_head_registry():
    from generation.models.hand import MASK_HEADS
    from generation.training.hand_config import HandTrainConfig
    from manifests.settings import field_choices

    fields = {f.name: f for f in dataclasses.fields(HandTrainConfig)}
    assert set(field_choices(fields["mask_head_type"])) == set(MASK_HEADS)


def test_training_loss_choices_are_the_loss_registries():
    from generation.training.hand_config import HandTrainConfig
    from generation.training.losses import MASK_LOSSES, RECONSTRUCTION_LOSSES
    from generation.training.vae_config import VaeTrainConfig
    from manifests.settings import field_choices

    vae = {f.name: f for f in dataclasses.fields(VaeTrainConfig)}
    hand = {f.name: f for f in dataclasses.fields(HandTrainConfig)}
    assert set(field_choices(vae["reconstruction_loss"])) == set(RECONSTRUCTION_LOSSES)
    assert set(field_choices(hand["mask_loss"])) == set(MASK_LOSSES)


def test_one_default_sigma():
    import inspect

    from generation.models.hand import HandUNet
    from manifests.geometry import DEFAULT_SIGMA, render_heatmap
    from prep.config import PrepConfig

    assert PrepConfig().sigma == DEFAULT_SIGMA
    assert inspect.signature(render_heatmap).parameters["sigma"].default == DEFAULT_SIGMA
    assert inspect.signature(HandUNet.__init__).parameters["heatmap_sigma"].default == DEFAULT_SIGMA


def test_generate_blending_options_are_the_blend_config():
    from generation.generate import GenerateConfig
    from generation.pipelines.blend_config import BlendConfig

    assert GenerateConfig().blend_config() == BlendConfig()


# --- the bad settings, through the Python API and the CLIs ----------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sigma", "nan"], r"sigma \(--sigma\) must be a finite number, got nan"),
        (["--sigma", "0"], r"sigma \(--sigma\) must be > 0, got 0.0"),
        (["--heatmap-size", "-3"], r"heatmap_size \(--heatmap-size\) must be >= 1, got -3"),
        (["--crop-size", "0"], r"crop_size \(--crop-size\) must be >= 16, got 0"),
        (["--crop-size", "-5"], r"crop_size \(--crop-size\) must be >= 16, got -5"),
        (["--crop-margin", "-1"], r"crop_margin \(--crop-margin\) must be >= 0, got -1.0"),
        (["--max-hands", "0"], r"max_hands \(--max-hands\) must be >= 1, got 0"),
        (["--crop-size", "64", "--heatmap-size", "65"], "heatmap_size .* must be <= crop_size"),
    ],
)
def test_prep_refuses_bad_settings_before_any_work(tmp_path, capsys, argv, message):
    import re

    import prep
    from prep.cli import main

    out = tmp_path / "m"
    assert main(["run", "--input", str(tmp_path), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("handfirst-prep: error: ") and re.search(message, err), err
    assert len(err.splitlines()) == 1
    assert not out.exists()
    kwargs = {a.lstrip("-").replace("-", "_"): a2 for a, a2 in zip(argv[::2], argv[1::2])}
    kwargs = {k: (float(v) if k in ("sigma", "crop_margin") else int(v)) for k, v in kwargs.items()}
    with pytest.raises(SettingError, match=message):
        prep.run(input=str(tmp_path), out=str(out), **kwargs)
    assert not out.exists()


def test_prep_refuses_bad_structured_settings():
    from prep.config import PrepConfig

    with pytest.raises(SettingError, match="split_fractions must map"):
        PrepConfig(split_fractions={"train": math.nan}).validate()
    with pytest.raises(SettingError, match="caption_templates must map"):
        PrepConfig(caption_templates={"peace": 3}).validate()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"guidance_scale": math.nan}, r"guidance_scale \(--guidance-scale\) must be a finite number"),
        ({"size": 0}, r"size \(--size\) must be >= 8, got 0"),
        ({"steps": 0}, r"steps \(--steps\) must be >= 1"),
        ({"seed": 2**70}, r"seed \(--seed\) must be <= 18446744073709551615"),
        ({"expand_start": 0.9, "expand_end": 0.1}, "expand_start <= expand_end"),
        ({"blend": "soft"}, r"blend \(--blend\) must be one of sequential, fixed, none"),
    ],
)
def test_generate_settings_refuse_bad_values(changes, message):
    from generation.generate import GenerateConfig

    settings = GenerateConfig(**changes)  # constructing never raises: validate() is the one check
    with pytest.raises(SettingError, match=message):
        settings.validate()


def test_generate_cli_refuses_nan_guidance_before_loading_models(tmp_path, capsys):
    from generation.cli import main

    spec = tmp_path / "pose.json"
    spec.write_text('{"width": 64, "height": 64, "hands": []}')
    code = main(
        [
            "generate",
            "--spec",
            str(spec),
            "--hand-model",
            str(tmp_path / "no-hand"),
            "--body-model",
            str(tmp_path / "no-body"),
            "--out",
            str(tmp_path / "o"),
            "--guidance-scale",
            "nan",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "guidance_scale (--guidance-scale) must be a finite number, got nan" in err
    assert "no-hand" not in err  # refused before the model folders were looked at


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learning-rate", "nan"], r"learning_rate \(--learning-rate\) must be a finite number"),
        (["--batch-size", "0"], r"batch_size \(--batch-size\) must be >= 1"),
        (["--text-dropout", "1.5"], r"text_dropout \(--text-dropout\) must be < 1"),
        (["--seed", str(2**70)], r"seed \(--seed\) must be <= "),
    ],
)
def test_train_commands_refuse_bad_settings(tmp_path, capsys, argv, message):
    import re

    from generation.cli import main

    for command in ("train-hand", "train-body"):
        out = tmp_path / command
        code = main([command, "--manifest", str(tmp_path / "none"), "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert code == 2 and re.search(message, err), err  # a bad setting is a usage error
        assert not out.exists()


def test_evaluate_refuses_bad_settings(tmp_path):
    from generation.evaluate.run import EvalConfig, evaluate
    from manifests.matching import MatchConfig

    with pytest.raises(SettingError, match=r"limit \(--limit\) must be >= 1, got 0"):
        evaluate(str(tmp_path), "real", str(tmp_path / "r"), EvalConfig(limit=0))
    with pytest.raises(SettingError, match=r"gate \(--gate\) must be a finite number > 0, got nan"):
        evaluate(str(tmp_path), "real", str(tmp_path / "r"), match=MatchConfig(gate=math.nan))
    assert not (tmp_path / "r").exists()


def test_generate_mask_fallback_choices_are_the_pipeline_registry():
    from generation.generate import GenerateConfig
    from generation.pipelines.placing import MASK_FALLBACKS
    from manifests.settings import field_choices

    fields = {f.name: f for f in dataclasses.fields(GenerateConfig)}
    assert set(field_choices(fields["mask_fallback"])) == set(MASK_FALLBACKS)
