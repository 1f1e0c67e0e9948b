"""Small two-stage requests and models shared by the generation tests: a pose spec file, the tiny hand
and body pipelines, and one call of the two-stage pipeline."""

import json
import os

import numpy as np
import torch

from generation.models.body import build_body_model
from generation.models.hand import HandUNet
from generation.models.loading import build_components
from generation.models.schedulers import sampling_scheduler
from generation.pipelines.body import BodyOutpaintPipeline
from generation.pipelines.hand import HandGenerationPipeline
from manifests.synthetic import synthetic_hand

W, H = 128, 96
PROMPT = "a person showing a peace sign"


def pose_spec_file(path, width=152, height=120, scale=0.3, seed=3, **changes):
    """examples/pose.json scaled into a small canvas (a size that is not a multiple of 16)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "examples", "pose.json")) as f:
        obj = json.load(f)
    obj.update(width=width, height=height, seed=seed)
    obj["body"]["keypoints"] = [[x * scale, y * scale * 0.75, v] for x, y, v in obj["body"]["keypoints"]]
    for hand in obj["hands"]:
        hand["keypoints"] = [[x * scale, y * scale * 0.75] for x, y in hand["keypoints"]]
    obj.update(changes)
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def tiny_two_stage_parts(seed=0):
    torch.manual_seed(seed)
    c = build_components("tiny", resolution=64, seed=seed)
    hand_unet = HandUNet.from_unet(c.unet, heatmap_sigma=1.0)
    hand_unet.record_crop_margin(0.25)  # as train-hand does
    hand = HandGenerationPipeline(
        hand_unet,
        c.vae,
        c.text_encoder,
        c.tokenizer,
        sampling_scheduler(c.scheduler),
    )
    b = build_components("tiny", resolution=64, seed=seed + 1)
    controlnet = build_body_model(b, "standard")
    with torch.no_grad():  # zero convolutions with some weight, so the condition reaches the output
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(0, 0.3)
    return hand, BodyOutpaintPipeline.from_components(b, controlnet)


def two_stage_request(hand_size=48.0, seed=0):
    rng = np.random.default_rng(seed)
    right = synthetic_hand(rng, (36, 48), hand_size)
    left = synthetic_hand(rng, (92, 48), hand_size)
    left[:, 0] = 2 * 92 - left[:, 0]
    body = np.zeros((33, 3))
    body[:, 0] = rng.uniform(20, 108, 33)
    body[:, 1] = np.linspace(4, 92, 33)
    body[:, 2] = 1.0
    return {
        "hands": [right, left],
        "handedness": ["right", "left"],
        "body_keypoints": body,
        "width": W,
        "height": H,
    }


def call_two_stage(pipe, **kw):
    args = {"prompt": PROMPT, **two_stage_request(), "num_inference_steps": 3, "output_type": "np", "seed": 0}
    return pipe(**{**args, **kw})
