"""``--dry-run`` of the training and generation commands: what a run would do, before it does it.

Every check a real start makes before writing (settings, run folder, model folders and Hub ids, the
manifests) runs; then the plan is printed as JSON and nothing is written:

- ``settings``: the resolved settings (defaults filled in, the preset ``--pretrained`` implies);
- ``models``: parameter counts, trainable and frozen, from the model folders' configs (the models are
  built on torch's ``meta`` device: no weight is read and no memory is taken);
- ``steps``: optimizer steps, effective batch, samples and epochs (training), or images and denoising
  steps (generation);
- ``memory_estimate_gib``: an estimate per GPU, marked as such. Weights, gradients, AdamW and EMA
  states are counted exactly from the parameter counts; activations are scaled from a rule of thumb
  (`ACTIVATION_GIB`), so the total is good to a factor of about 1.5. ``bench/gpu.py`` measures.
"""

from __future__ import annotations

import json
import os

GIB = 2**30
SD15_UNET_PARAMS = 859_520_964
# Rule of thumb for the activations a backward pass keeps, per sample, for an SD-1.5-sized UNet on 64x64
# latents (512 px) in half precision: without and with gradient checkpointing. Scaled linearly with the
# latent pixels and the parameters of the modules that run with gradients; doubled in float32.
ACTIVATION_GIB = {False: 3.0, True: 0.75}
# Inference: the activations of one UNet forward pass, per image (CFG doubles the batch), same scaling.
INFERENCE_ACTIVATION_GIB = 0.6


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta():
    import torch

    return torch.device("meta")


def base_skeleton(preset: str, folder: str | None, resolution: int, seed: int = 0) -> dict:
    """UNet, VAE and text encoder of a preset or a folder, built on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with _meta():
        if folder:
            return {
                "unet": UNet2DConditionModel.from_config(
                    UNet2DConditionModel.load_config(folder, subfolder="unet")
                ),
                "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae")),
                "text_encoder": CLIPTextModel(
                    CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder")
                ),
            }
        from .models.loading import build_components

        c = build_components(preset, resolution=resolution, seed=seed)
        return {"unet": c.unet, "vae": c.vae, "text_encoder": c.text_encoder}


# Libraries whose classes a saved pipeline's model_index.json may name here: building a class from a
# folder must never import a module the folder chose.
KNOWN_LIBRARIES = ("diffusers", "transformers", "generation.models.hand", "generation.models.body")
NOT_MODELS = ("tokenizer", "scheduler", "feature_extractor", "safety_checker")


def saved_skeleton(folder: str) -> dict:
    """Every model a saved pipeline's model_index.json lists, built on the meta device from its config."""
    import importlib

    index_file = os.path.join(folder, "model_index.json")
    with open(index_file, encoding="utf-8") as f:
        index = json.load(f)
    parts = {}
    with _meta():
        for name, entry in index.items():
            if name.startswith("_") or name in NOT_MODELS or not isinstance(entry, list) or None in entry:
                continue
            library, cls_name = entry
            if library not in KNOWN_LIBRARIES:
                raise ValueError(
                    f"{index_file}: {name} is a {library}.{cls_name}, not a model class handfirst knows"
                )
            cls = getattr(importlib.import_module(library), cls_name)
            if hasattr(cls, "load_config"):
                parts[name] = cls.from_config(cls.load_config(folder, subfolder=name))
            else:
                parts[name] = cls(cls.config_class.from_pretrained(folder, subfolder=name))
    return parts


def _sizes(trainable: dict, frozen: dict) -> dict:
    return {
        "trainable": {k: count(m) for k, m in trainable.items()},
        "frozen": {k: count(m) for k, m in frozen.items()},
        "trainable_total": sum(count(m) for m in trainable.values()),
        "frozen_total": sum(count(m) for m in frozen.values()),
    }


# ---- training ------------------------------------------------------------------------------------


def _hand_models(task) -> tuple[dict, dict, int]:
    from .models.hand import HandUNet

    c = task.config
    if c.init_from:
        parts = saved_skeleton(c.init_from)
        unet = parts.pop("unet")
        return {"hand_unet": unet}, parts, task.facts["latent_size"]
    base = base_skeleton(c.preset, task.base, task.facts["resolution"], c.seed)
    with _meta():
        model = HandUNet.from_unet(
            base.pop("unet"), mask_head_type=c.mask_head_type, mask_head_channels=c.mask_head_channels
        )
    return {"hand_unet": model}, base, task.facts["latent_size"]


def _body_models(task) -> tuple[dict, dict, int]:
    from diffusers import ControlNetModel

    from .pipelines.condition import ConditionConfig, conditioning_channels

    c = task.config
    latent = c.resolved_resolution // 8
    if c.init_from:
        parts = saved_skeleton(c.init_from)
        trainable = {"controlnet": parts.pop("controlnet")}
    else:
        parts = base_skeleton(c.preset, task.base, c.resolved_resolution, c.seed)
        channels = conditioning_channels(
            ConditionConfig(channels=tuple(c.condition_channels), draw_hand_skeletons=c.draw_hand_skeletons)
        )
        with _meta():
            if task.controlnet_folder:
                controlnet = ControlNetModel.from_config(ControlNetModel.load_config(task.controlnet_folder))
            else:
                controlnet = ControlNetModel.from_unet(parts["unet"], conditioning_channels=channels)
        trainable = {"controlnet": controlnet}
    if c.train_base_unet:
        trainable["unet"] = parts.pop("unet")
    return trainable, parts, latent


def _vae_models(task) -> tuple[dict, dict, int]:
    c = task.config
    res = c.resolved_resolution if hasattr(c, "resolved_resolution") else 64
    base = base_skeleton("sd" if c.pretrained else c.preset, c.pretrained, res, c.seed)
    return {"vae": base.pop("vae")}, {}, res // 8


# task name -> (the task class's module and name, the models it trains and freezes)
TASKS = {
    "HandTrainConfig": ("generation.training.hand", "HandTask", _hand_models),
    "BodyTrainConfig": ("generation.training.body", "BodyTask", _body_models),
    "VaeTrainConfig": ("generation.training.vae", "VaeTask", _vae_models),
}


def training_memory(config, sizes: dict, latent_side: int, activated_params: int) -> dict:
    """Estimated GiB per GPU of a training run (see the module docstring)."""
    half = config.precision in ("fp16", "bf16")
    per_trainable = 4 + 4 + (2 if config.use_8bit_adam else 8) + (4 if config.ema else 0)
    states = sizes["trainable_total"] * per_trainable / GIB
    frozen = sizes["frozen_total"] * (2 if half else 4) / GIB
    scale = (latent_side / 64) ** 2 * activated_params / SD15_UNET_PARAMS * (1 if half else 2)
    activations = ACTIVATION_GIB[bool(config.gradient_checkpointing)] * scale * config.batch_size
    return {
        "estimate": True,
        "weights_grads_optimizer_ema": round(states, 2),
        "frozen_models": round(frozen, 2),
        "activations": round(activations, 2),
        "total": round(states + frozen + activations + 0.5, 2),  # + CUDA context and allocator slack
    }


def training_plan(train, config) -> str:
    """The ``--dry-run`` plan of a training command (JSON text); writes nothing."""
    import importlib

    from .training.run_folder import check_run_folder

    module, cls_name, models = TASKS[type(config).__name__]
    config = config.resolve()
    config.validate()
    task = getattr(importlib.import_module(module), cls_name)(config)
    folder_use = check_run_folder(config.out, task.name, config)
    task.check_models()
    task.check_data()
    if not hasattr(task, "base"):
        task.base = None
    trainable, frozen, latent_side = models(task)
    sizes = _sizes(trainable, frozen)
    activated = sizes["trainable_total"] + sum(count(m) for k, m in frozen.items() if k == "unet")
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    effective = config.batch_size * config.gradient_accumulation_steps * processes
    rows = task.facts.get("hands_selected") or task.facts.get("usable_images") or task.facts.get("images")
    steps = {
        "steps": config.steps,
        "batch_size_per_device": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "processes": processes,
        "effective_batch": effective,
        "samples_seen": config.steps * effective,
        "training_rows": rows,
        "epochs": round(config.steps * effective / rows, 2) if rows else None,
    }
    plan = {
        "command": f"train-{task.name}",
        "dry_run": "nothing was written",
        "run_folder": {"path": config.out, "use": folder_use},
        "settings": config.to_dict(),
        "data": task.describe(),
        "models": sizes,
        "steps": steps,
        "memory_estimate_gib": training_memory(config, sizes, latent_side, activated),
    }
    return json.dumps(plan, indent=2, default=str)


# ---- generation ----------------------------------------------------------------------------------


def inference_memory(params: int, side: int, batch: int, precision: str) -> dict:
    """Estimated GiB of drawing `batch` images of `side` px with models of `params` parameters."""
    width = 4 if precision == "fp32" else 2
    weights = params * width / GIB
    activations = INFERENCE_ACTIVATION_GIB * 2 * batch * (side / 512) ** 2 * (width / 2)
    return {
        "estimate": True,
        "weights": round(weights, 2),
        "activations": round(activations, 2),
        "total": round(weights + activations + 0.5, 2),
    }


def _rows(manifest: str, image_ids, split, limit) -> int:
    from manifests.reader import open_manifest

    from .selection import select_rows

    if image_ids:
        return len(image_ids)
    return len(select_rows(open_manifest(manifest), ["image_id"], split=split, limit=limit))


def generate_plan(sources, hand_model: str, body_model: str, settings) -> str:
    """The ``--dry-run`` plan of ``generate`` (JSON text); writes nothing, loads no weight."""
    from .models.loading import check_saved_pipeline
    from .processes import ProcessShare

    settings.validate()
    for folder, what in ((hand_model, "hand model"), (body_model, "body model")):
        check_saved_pipeline(folder, what, "a train-hand / train-body run folder")
    hand, body = saved_skeleton(hand_model), saved_skeleton(body_model)
    sizes = {"hand": {k: count(m) for k, m in hand.items()}, "body": {k: count(m) for k, m in body.items()}}
    total = sum(sum(v.values()) for v in sizes.values())
    if sources.from_manifest:
        images = _rows(sources.from_manifest, sources.image_id, sources.split, sources.limit)
    else:
        images = len(sources.spec or sources.from_image or sources.replay or [])
    side = settings.size or int(body["unet"].config.sample_size) * 8
    hand_steps = settings.hand_steps or settings.steps
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    plan = {
        "command": "generate",
        "dry_run": "nothing was written",
        "settings": settings.to_dict(),
        "sources": {k: v for k, v in vars(sources).items() if v},
        "models": {"parameters": sizes, "total": total},
        "steps": {
            "images": images,
            "processes": processes,
            "images_per_process": -(-images // processes) if images else 0,
            "stage2_batch_size": settings.batch_size,
            "body_denoising_steps_per_image": settings.steps,
            "hand_denoising_steps_per_hand": hand_steps,
            "longer_side_px": side,
        },
        "memory_estimate_gib": inference_memory(total, side, settings.batch_size, settings.precision),
        "failures_file": ProcessShare().failures_file(),
    }
    return json.dumps(plan, indent=2, default=str)


def baseline_plan(settings, manifest: str, image_ids, split, limit) -> str:
    """The ``--dry-run`` plan of ``baseline`` (JSON text); writes nothing, loads no weight."""
    from diffusers import ControlNetModel

    from .baseline import model_folders

    folders = model_folders(settings)
    parts = base_skeleton("sd", folders["pretrained"], 512)
    if settings.controlnet:
        with _meta():
            parts["controlnet"] = ControlNetModel.from_config(
                ControlNetModel.load_config(folders["controlnet"])
            )
    sizes = {k: count(m) for k, m in parts.items()}
    side = settings.size or int(parts["unet"].config.sample_size) * 8
    images = _rows(manifest, image_ids, split, limit)
    plan = {
        "command": "baseline",
        "dry_run": "nothing was written",
        "settings": settings.to_dict(),
        "model_folders": folders,
        "models": {"parameters": sizes, "total": sum(sizes.values())},
        "steps": {
            "images": images,
            "processes": int(os.environ.get("WORLD_SIZE", "1") or 1),
            "batch_size": settings.batch_size,
            "denoising_steps_per_image": settings.steps,
            "longer_side_px": side,
        },
        "memory_estimate_gib": inference_memory(
            sum(sizes.values()), side, settings.batch_size, settings.precision
        ),
    }
    return json.dumps(plan, indent=2, default=str)
