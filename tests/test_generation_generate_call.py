"""Each generate option is declared once: a `GenerateConfig` field names the pipeline argument it
feeds, and `call_arguments` passes every such field, under that name, to the two-stage call."""

import dataclasses
import inspect

import numpy as np

from generation import TwoStageHandBodyPipeline
from generation.generate import GenerateConfig, Request, call_arguments
from generation.pipelines.blend_config import BlendConfig
from generation.spec import HandSpec, PoseSpec


def test_every_setting_that_feeds_the_call_names_a_parameter_of_the_pipeline_call():
    params = set(inspect.signature(TwoStageHandBodyPipeline.__call__).parameters)
    feeding = {
        f.name: f.metadata["call"] for f in dataclasses.fields(GenerateConfig) if f.metadata.get("call")
    }
    assert len(feeding) >= 17 and set(feeding.values()) <= params


def test_call_arguments_pass_each_setting_under_its_argument_name():
    hands = [HandSpec("right", np.full((21, 3), 32.0))]
    spec = PoseSpec(64, 64, None, None, hands, prompt="p", seed=9)
    changed = {}
    for f in dataclasses.fields(GenerateConfig):
        if f.metadata.get("call") and isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            changed[f.name] = f.default + 1
        elif f.metadata.get("call") and isinstance(f.default, bool):
            changed[f.name] = not f.default
    settings = GenerateConfig(**changed, hand_guidance_scale=2.0, d0=1)
    kwargs = call_arguments(Request(spec), settings)
    for name, value in changed.items():
        arg = GenerateConfig.__dataclass_fields__[name].metadata["call"]
        assert kwargs[arg] == value, name
    assert kwargs["hand_guidance_scale"] == 2.0 and kwargs["controlnet_conditioning_scale"] == 2.0
    assert kwargs["blend"] == BlendConfig(d0=1)  # one BlendConfig from the settings to the call
    assert kwargs["seed"] == 9 and kwargs["prompt"] == "p" and kwargs["hand_num_inference_steps"] == 31
