"""One-stage baselines, drawn for exactly the manifest rows `generate --from-manifest` draws.

The paper's claim is comparative: hands first, then the body, against one diffusion model conditioned
on the whole pose. ``handfirst-gen baseline`` makes the other side of that comparison one command:

- ``controlnet-openpose``: diffusers' `StableDiffusionControlNetPipeline` with a local OpenPose
  ControlNet (e.g. ``control_v11p_sd15_openpose``) on a local Stable Diffusion folder. The condition
  is OpenPose-full: the body as OpenPose-18 plus both hands' 21-point skeletons, drawn by
  `generation.pipelines.condition.render_openpose` (the renderer the body outpainter's pose channels use);
- ``sd``: the same Stable Diffusion folder with the prompt only, the floor.

Requests come from `generation.generate.requests_from_manifest` (same selection, same output size,
same names, same seeds), and the files are named as `generate` names them: ``<image_id>.png`` and
a ``<image_id>.json`` sidecar (``source``, ``spec``, ``settings``, ``models``), plus
``<image_id>_condition.png`` for the ControlNet method. So::

    handfirst-gen generate --from-manifest M --out gen/sequential ...
    handfirst-gen baseline --method controlnet-openpose --from-manifest M --pretrained SD \\
        --controlnet CN --out gen/baseline-openpose
    handfirst-gen evaluate --manifest M --generated gen/baseline-openpose --out rep/baseline-openpose
    handfirst-gen evaluate --compare rep/real rep/baseline-openpose rep/none rep/fixed rep/sequential --out rep

line up image by image. A rerun skips images whose PNG and sidecar exist (``overwrite`` redoes them).
Under ``accelerate launch`` each process draws its share of the rows (`generation.processes`).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from manifests.settings import (
    OLD_PRECISION_NAMES,
    SettingError,
    Settings,
    precision_setting,
    setting,
    setting_like,
    torch_dtype,
)

from .generate import (
    GenerateConfig,
    Request,
    is_done,
    output_paths,
    requests_from_manifest,
    save_png,
    versions,
    weights_fingerprint,
    write_image_and_sidecar,
)
from .guards import (
    DEFAULT_MAX_PIXEL_STEPS,
    DEFAULT_MAX_PIXELS,
    MAX_SEED,
    check_finite,
    check_image_cost,
    make_generator,
)
from .processes import this_process
from .selection import DEFAULT_SPLIT

logger = logging.getLogger(__name__)


def _needs_controlnet(settings: BaselineConfig) -> None:
    if not settings.controlnet:
        raise SettingError(
            "--method controlnet-openpose needs --controlnet DIR (a diffusers ControlNet folder or Hub id)"
        )


def _no_controlnet(settings: BaselineConfig) -> None:
    if settings.controlnet:
        raise SettingError("--method sd draws from the prompt alone; drop --controlnet")


@dataclass(frozen=True)
class Method:
    """A baseline: how its settings are checked, its pipeline built and one image drawn."""

    check: Callable
    load: Callable
    draw: Callable


@dataclass
class BaselineConfig(Settings):
    """Every setting of `handfirst-gen baseline` (one CLI option each); recorded in each sidecar."""

    RENAMED = {"dtype": OLD_PRECISION_NAMES["dtype"]}

    method: str = setting(
        "controlnet-openpose",
        "controlnet-openpose (OpenPose-full condition: body and hand skeletons) or sd (prompt only)",
        choices=lambda: tuple(METHODS),
    )
    pretrained: str = setting(
        "", "Stable Diffusion: a diffusers folder or a Hub id in the local Hugging Face cache"
    )
    controlnet: str | None = setting(
        None,
        "OpenPose ControlNet (controlnet-openpose): a diffusers folder or a Hub id in the local Hugging Face "
        "cache (e.g. lllyasviel/control_v11p_sd15_openpose)",
    )
    allow_download: bool = setting(
        False, "fetch a --pretrained / --controlnet Hub id that is not in the local Hugging Face cache"
    )
    steps: int = setting(30, "denoising steps", ge=1, le=1000)
    guidance_scale: float = setting(7.5, "text guidance (1 disables it)", ge=0, le=100)
    conditioning_scale: float = setting(1.0, "ControlNet residual scale", ge=0, le=10)
    seed: int = setting(0, "seed of every image (as generate --from-manifest)", ge=0, le=MAX_SEED)
    size: int | None = setting(
        None,
        "longer output side in px, or with --fit the training side (default: the UNet's native size)",
        ge=8,
        le=8192,
    )
    fit: str | None = setting(
        None,
        "draw each whole frame at the scale a body model trained with this fit at --size sees it, as "
        "generate --from-manifest does for its body model (default: longer side --size)",
        choices=("cover", "contain"),
    )
    framing: str = setting_like(
        GenerateConfig,
        "framing",
        help="draw the whole frame, or (hands) the --size square around the hands that a body model trained "
        "with --fit cuts, as generate --framing hands does; the sidecar records the window",
    )
    negative_prompt: str = setting("", "negative prompt")
    batch_size: int = setting(
        1, "requests of one size drawn as one batch (each from its own seed, as one by one)", ge=1, le=256
    )
    device: str | None = setting(None, "cuda / cpu / mps (default: cuda when available)")
    precision: str = precision_setting()
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "refuse an image with more pixels than this", ge=1)
    max_pixel_steps: int = setting(
        DEFAULT_MAX_PIXEL_STEPS, "refuse an image whose pixels x steps exceed this", ge=1
    )
    overwrite: bool = setting(False, "redo images whose PNG and sidecar exist (default: skip them)")

    def validate(self) -> BaselineConfig:
        super().validate()
        if not self.pretrained:
            raise SettingError("--pretrained is required (a Stable Diffusion folder or Hub id)")
        METHODS[self.method].check(self)
        return self


def model_folders(settings: BaselineConfig) -> dict:
    """The local folders of ``--pretrained`` and ``--controlnet`` (Hub ids found in the local cache,
    `generation.models.hub.find_model`), their layouts checked before anything loads."""
    from .models.checks import check_controlnet_folder, check_sd_folder
    from .models.hub import find_model

    allow = settings.allow_download
    folders = {
        "pretrained": find_model(settings.pretrained, "Stable Diffusion folder", "--pretrained", allow)
    }
    facts = check_sd_folder(folders["pretrained"])
    if settings.controlnet:
        folders["controlnet"] = find_model(settings.controlnet, "ControlNet folder", "--controlnet", allow)
        check_controlnet_folder(folders["controlnet"], facts.unet, "--controlnet")
    return folders


def _device(settings: BaselineConfig) -> str:
    import torch

    return settings.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _components(settings: BaselineConfig) -> dict:

    from .models.loading import build_components
    from .models.schedulers import sampling_scheduler

    c = build_components("sd", pretrained=settings.pretrained)
    dtype = torch_dtype(settings.precision)
    return {
        "vae": c.vae.to(dtype=dtype),
        "text_encoder": c.text_encoder.to(dtype=dtype),
        "tokenizer": c.tokenizer,
        "unet": c.unet.to(dtype=dtype),
        "scheduler": sampling_scheduler(c.scheduler, "ddim"),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def _load_controlnet_pipeline(settings: BaselineConfig):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from .models.loading import ModelFolderError, dtype_argument

    if not os.path.isfile(os.path.join(settings.controlnet, "config.json")):
        raise ModelFolderError(
            f"{settings.controlnet!r} is not a diffusers ControlNet folder (no config.json)"
        )
    controlnet = ControlNetModel.from_pretrained(
        settings.controlnet, **dtype_argument(torch_dtype(settings.precision), ControlNetModel)
    )
    if controlnet.config.conditioning_channels != 3:
        raise ModelFolderError(
            f"{settings.controlnet!r}: an OpenPose ControlNet sees 3 condition channels, this one "
            f"{controlnet.config.conditioning_channels}"
        )
    pipe = StableDiffusionControlNetPipeline(controlnet=controlnet, **_components(settings))
    return pipe.to(_device(settings))


def _load_sd_pipeline(settings: BaselineConfig):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**_components(settings)).to(_device(settings))


def render_condition(request: Request) -> np.ndarray:
    """The OpenPose-full condition of a request: (H, W, 3) uint8 RGB at the output size."""
    from .pipelines.condition import render_openpose

    spec = request.spec
    return render_openpose(
        spec.width,
        spec.height,
        spec.body,
        spec.body_format or "mediapipe33",
        [h.keypoints for h in spec.hands],
    )


def drawn_size(width: int, height: int, multiple: int = 8) -> tuple[int, int]:
    """The canvas Stable Diffusion draws on: each side rounded up to a multiple of the VAE's 8. The
    condition is padded with black on the right and bottom, and the image cropped back, so the
    keypoints keep their pixels."""
    return -(-int(width) // multiple) * multiple, -(-int(height) // multiple) * multiple


def _common(requests: list[Request], settings: BaselineConfig, generators: list) -> dict:
    """The diffusers call for requests of one drawn size (a batch of one passes plain values)."""
    width, height = drawn_size(requests[0].spec.width, requests[0].spec.height)
    prompts = [r.spec.prompt for r in requests]
    negatives = [settings.negative_prompt or r.spec.negative_prompt or None for r in requests]
    one = len(requests) == 1
    return {
        "prompt": prompts[0] if one else prompts,
        "negative_prompt": negatives[0] if one else [n or "" for n in negatives],
        "height": height,
        "width": width,
        "num_inference_steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "generator": generators[0] if one else generators,
        "output_type": "latent",
    }


def _draw_controlnet(pipe, requests: list[Request], settings: BaselineConfig, generators: list):
    from PIL import Image

    conditions = [render_condition(r) for r in requests]
    width, height = drawn_size(requests[0].spec.width, requests[0].spec.height)
    images = []
    for condition in conditions:
        padded = np.zeros((height, width, 3), np.uint8)
        padded[: condition.shape[0], : condition.shape[1]] = condition
        images.append(Image.fromarray(padded))
    out = pipe(
        image=images[0] if len(images) == 1 else images,
        controlnet_conditioning_scale=settings.conditioning_scale,
        **_common(requests, settings, generators),
    )
    return out.images, [{"condition": c} for c in conditions]


def _draw_sd(pipe, requests: list[Request], settings: BaselineConfig, generators: list):
    return pipe(**_common(requests, settings, generators)).images, [{} for _ in requests]


METHODS: dict[str, Method] = {
    "controlnet-openpose": Method(_needs_controlnet, _load_controlnet_pipeline, _draw_controlnet),
    "sd": Method(_no_controlnet, _load_sd_pipeline, _draw_sd),
}


def native_size(pipe) -> int:
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def _decode(pipe, latents) -> np.ndarray:
    import torch

    check_finite(latents, "the final latents", model=pipe.unet, model_name="UNet")
    with torch.no_grad():
        pixels = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    check_finite(pixels, "the decoded pixels", model=pipe.vae, model_name="VAE")
    pixels = (pixels / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
    return (pixels * 255).round().astype(np.uint8)


def baseline_group(
    pipe,
    requests: list[Request],
    settings: BaselineConfig,
    out_dir: str,
    models: dict,
    process: dict | None = None,
) -> list[dict]:
    """Draw requests of one drawn size with the baseline as one batch (each from its own seed, as one
    by one) and write each one's PNG, condition and sidecar; returns the sidecars. `process`
    (``process_index``, ``num_processes``) says which of the launched processes drew them."""
    for request in requests:
        output_paths(out_dir, request.name)  # refuses an unsafe name before any work
        check_image_cost(
            request.spec.width,
            request.spec.height,
            settings.steps,
            settings.max_pixels,
            settings.max_pixel_steps,
            what=f"image {request.name}",
        )
    generators = [make_generator(r.spec.seed if r.spec.seed is not None else settings.seed) for r in requests]
    latents, extras = METHODS[settings.method].draw(pipe, requests, settings, generators)
    return [
        _write(pipe, r, settings, latents[k : k + 1], extras[k], out_dir, models, process, len(requests))
        for k, r in enumerate(requests)
    ]


def _write(pipe, request, settings, latents, extras, out_dir, models, process, batch) -> dict:
    spec = request.spec
    paths = output_paths(out_dir, request.name)
    image = _decode(pipe, latents)[: spec.height, : spec.width]
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    if "condition" in extras:
        condition_path = paths["image"][: -len(".png")] + "_condition.png"
        save_png(extras["condition"], condition_path)
        files["condition"] = os.path.basename(condition_path)
    sidecar = {
        "name": request.name,
        "image": os.path.basename(paths["image"]),
        "width": spec.width,
        "height": spec.height,
        "source": request.source,
        "spec": spec.to_dict(),
        "baseline": settings.method,
        "settings": settings.to_dict(),
        "models": models,
        "files": files,
        "device": str(pipe.device),
        "batch": batch,
        **(process or {"process_index": 0, "num_processes": 1}),
        "versions": versions(),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_image_and_sidecar(paths, image, sidecar)  # the sidecar last: a rerun redoes anything before it
    return sidecar


def run_baseline(
    manifest: str,
    out_dir: str,
    settings: BaselineConfig,
    image_ids: list[str] | None = None,
    split: str | None = DEFAULT_SPLIT,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Draw the baseline for the rows `generate --from-manifest` selects with the same arguments.

    Returns ``{"written": [...], "skipped": [...]}`` (names). Settings are checked and the requests
    made before the models load, so a bad input fails in seconds.
    """
    from manifests.progress import progress_bar

    settings.validate()
    method = METHODS[settings.method]
    folders = model_folders(settings)
    share = this_process()
    pipe = method.load(dataclasses.replace(settings, **folders, device=settings.device or share.device))
    size = settings.size or native_size(pipe)
    requests = requests_from_manifest(
        manifest, image_ids, size, split, limit, settings.seed, fit=settings.fit, framing=settings.framing
    )
    models = {
        "pretrained": os.path.abspath(folders["pretrained"]),
        "pretrained_fingerprint": weights_fingerprint(folders["pretrained"]),
    }
    if settings.controlnet:
        models.update(
            controlnet=os.path.abspath(folders["controlnet"]),
            controlnet_fingerprint=weights_fingerprint(folders["controlnet"]),
        )
    requests = share.take(requests)  # under accelerate launch, this process's share of the rows
    pipe.set_progress_bar_config(disable=True)
    skipped = [r.name for r in requests if not settings.overwrite and is_done(out_dir, r.name)]
    pending = [r for r in requests if r.name not in set(skipped)]
    written = []
    bar = progress_bar(total=len(pending), desc=f"baseline {settings.method}", unit="img", enabled=progress)
    for group in _size_groups(pending, settings.batch_size):
        baseline_group(pipe, group, settings, out_dir, models, share.record())
        written += [r.name for r in group]
        bar.update(len(group))
    bar.close()
    return {"written": written, "skipped": skipped}


def _size_groups(requests: list[Request], batch_size: int) -> list[list[Request]]:
    """Consecutive requests of one drawn size, at most `batch_size` a group."""
    groups: list[list[Request]] = []
    for r in requests:
        size = drawn_size(r.spec.width, r.spec.height)
        last = groups[-1] if groups else None
        if last and len(last) < batch_size and drawn_size(last[0].spec.width, last[0].spec.height) == size:
            last.append(r)
        else:
            groups.append([r])
    return groups
