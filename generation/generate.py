"""`handfirst-gen generate` as a Python API: requests from spec files, manifest rows or photos, the
two-stage pipeline, and the files written per image.

Per request named NAME, `generate_one` writes into the output folder:

- ``NAME.png``: the image, at the request's width x height;
- ``NAME.json``: the sidecar, with the exact request (pose in output pixels, prompts, seed), every
  setting, the model folders and their fingerprints, what the pipeline did (hands generated, skipped,
  paste order, mask sources, timings) and library versions. ``--replay NAME.json`` redoes it;
- ``NAME_overview.png``: target skeleton, stage-1 hands, blending masks over time, final image with the
  pose detected in it;
- ``NAME_stage1/``: ``hand{i}.png`` and ``hand{i}_mask.png`` per generated hand (i = the hand's index
  in the request), plus ``canvas.png`` / ``canvas_mask.png``, the hands pasted into the output frame.

NAME comes from input files (a spec's file stem, a photo's, a manifest's ``image_id``, a replayed
sidecar's ``name``), so every path is made by `manifests.names.path_in`, which refuses any NAME that is
not one plain file name: nothing is ever written outside the output folder.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from manifests.names import path_in
from manifests.settings import Settings, setting, setting_like

from .blend_config import BlendConfig
from .guards import DEFAULT_MAX_PIXEL_STEPS, DEFAULT_MAX_PIXELS
from .selection import DEFAULT_SPLIT
from .spec import HandSpec, PoseSpec, SpecError, load_spec, parse_spec, read_json_file
from .training.config import MAX_SEED

logger = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class GenerateSettings(Settings):
    """Every setting of `handfirst-gen generate` (one CLI option each); recorded in each sidecar."""

    steps: int = setting(30, "stage-2 (body) denoising steps", ge=1, le=1000)
    hand_steps: int | None = setting(None, "stage-1 (hand) denoising steps (default: --steps)", ge=1, le=1000)
    guidance_scale: float = setting(7.5, "stage-2 text guidance (1 disables it)", ge=0, le=100)
    hand_guidance_scale: float | None = setting(
        None, "stage-1 text guidance (default: --guidance-scale)", ge=0, le=100
    )
    pose_guidance_scale: float = setting(
        1.0, "stage-1 extra guidance on the hand pose (1 disables it)", ge=0, le=100
    )
    conditioning_scale: float = setting(1.0, "ControlNet residual scale in stage 2", ge=0, le=10)
    uncond_condition: str = setting(
        "same",
        "stage-2 unconditional branch: same condition (guide on text) or zero",
        choices=("same", "zero"),
    )
    seed: int | None = setting(
        None, "seed (default: the spec's seed; 0 for manifest rows and photos)", ge=0, le=MAX_SEED
    )
    blend: str = setting_like(BlendConfig, "mode")
    d0: int = setting_like(BlendConfig, "d0")
    expand_pixels: int = setting_like(BlendConfig, "expand_pixels")
    expand_start: float = setting_like(BlendConfig, "expand_start")
    expand_end: float = setting_like(BlendConfig, "expand_end")
    min_core: int = setting_like(BlendConfig, "min_core")
    pixel_composite: bool = setting(False, "paste the stage-1 hand interiors back over the decoded image")
    feather: int = setting(
        3, "pixel composite: erosion and feathering of the hand mask, pixels", ge=0, le=256
    )
    mask_threshold: float = setting(0.5, "stage-1 mask probability above which a pixel is hand", ge=0, le=1)
    mask_fallback: str = setting(
        "skeleton",
        "a stage-1 mask that misses the hand is replaced by one drawn from the skeleton, or kept (none)",
        choices=("skeleton", "none"),
    )
    min_mask_coverage: float = setting(
        0.5, "share of a hand's keypoints its stage-1 mask must cover", ge=0, le=1
    )
    small_hands: str = setting(
        "skip",
        "hands under --min-hand-size: skip (stage 2 paints them) or refuse",
        choices=("skip", "refuse"),
    )
    min_hand_size: float = setting(
        16.0, "smallest hand (longer side of its keypoint box) to draw, output px", ge=0
    )
    overlap_order: str = setting(
        "larger_on_top", "which hand covers the other where they overlap", choices=("larger_on_top", "given")
    )
    hand_encoding: str = setting(
        "windows",
        "VAE-encode a window around each hand (cost follows the hands) or the whole canvas",
        choices=("windows", "canvas"),
    )
    crop_margin: float | None = setting(
        None,
        "hand crop margin (default: the one of the hand model's training manifest, else 0.25)",
        ge=0,
        le=4,
    )
    prompt: str | None = setting(None, "image prompt (default: the spec's, the manifest caption, or built)")
    negative_prompt: str | None = setting(None, "negative prompt (default: the spec's, else empty)")
    hand_prompt: str | None = setting(
        None, "stage-1 caption for every hand, '{side}' becomes left/right (default: built from --gesture)"
    )
    gesture: str | None = setting(None, "gesture label for the default captions (e.g. peace, palm)")
    size: int | None = setting(
        None,
        "manifest rows and photos: longer output side in px (default: manifest rows whole at the body model's "
        "training scale, see docs/fidelity.md 'Framing'; photos at longer side its training size)",
        ge=8,
        le=8192,
    )
    device: str | None = setting(None, "cuda / cpu / mps (default: cuda when available)")
    dtype: str = setting("float32", "model precision", choices=DTYPES)
    detect: bool = setting(True, "detect the pose in the result for the overview sheet (MediaPipe)")
    overwrite: bool = setting(False, "redo images whose PNG and sidecar exist (default: skip them)")
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS, "refuse an image whose stage-2 canvas is over this many pixels (2048x2048)", ge=1
    )
    max_pixel_steps: int = setting(
        DEFAULT_MAX_PIXEL_STEPS,
        "refuse an image whose canvas x --steps plus hand crops x hand steps is over this (2048x2048 x 100)",
        ge=1,
    )

    def validate(self) -> GenerateSettings:
        super().validate()
        self.blend_config()  # the blending options' own rules (expand_start <= expand_end)
        return self

    def blend_config(self) -> BlendConfig:
        return BlendConfig(mode=self.blend, d0=self.d0, expand_pixels=self.expand_pixels,
                           expand_start=self.expand_start, expand_end=self.expand_end,
                           min_core=self.min_core)  # fmt: skip


@dataclass
class Request:
    """One image to make: the pose spec (output pixels) plus where it came from and per-hand captions."""

    spec: PoseSpec
    source: dict = field(default_factory=dict)
    hand_prompts: list[str] | None = None

    @property
    def name(self) -> str:
        return self.spec.name


class RequestError(ValueError):
    """A request cannot be built (bad manifest row, unknown image id, nothing detected in a photo)."""


# ---------------------------------------------------------------------------------------------------
# Requests


def requests_from_specs(paths: list[str]) -> list[Request]:
    """Spec files -> requests named by the file stems; two files with the same stem are refused."""
    out, seen = [], {}
    for path in paths:
        spec = load_spec(path)
        if spec.name in seen:
            raise SpecError(f"{path} and {seen[spec.name]} would both write {spec.name}.png; rename one")
        seen[spec.name] = path
        out.append(Request(spec, {"kind": "spec", "path": os.path.abspath(path)}))
    return out


def output_size(width: int, height: int, longest: int, fit: str | None = None) -> tuple[int, int]:
    """(w, h) of a (width, height) frame, the aspect ratio kept: with the longer side `longest`, or, with
    `fit` (the body model's training framing), at the scale the body trainer sees the frame in its
    `longest` x `longest` square (`manifests.transforms.frame_at_training_scale`)."""
    if fit is not None:
        from manifests.transforms import frame_at_training_scale

        return frame_at_training_scale(width, height, longest, fit)
    scale = longest / float(max(width, height))
    return max(8, int(round(width * scale))), max(8, int(round(height * scale)))


def _scaled(kps, sx: float, sy: float, width: int, height: int) -> np.ndarray:
    """Keypoints into the output frame; points off the canvas (MediaPipe predicts joints outside the
    frame) get score 0, so they are neither drawn nor checked."""
    arr = np.array(kps, dtype=np.float64, copy=True)
    arr[:, 0] *= sx
    arr[:, 1] *= sy
    off = (arr[:, 0] < 0) | (arr[:, 0] > width) | (arr[:, 1] < 0) | (arr[:, 1] > height)
    arr[off | ~np.isfinite(arr[:, :2]).all(axis=1), 2] = 0.0
    arr[~np.isfinite(arr)] = 0.0
    return arr


def _spec_from_pose(
    name: str, frame: tuple[int, int], size: int, body, hands, prompt: str, seed: int, fit: str | None = None
) -> tuple[PoseSpec, list[int]]:
    """A PoseSpec of `output_size(*frame, size, fit)` from keypoints in a (W, H) `frame`; hands = [(side, (21, 3))].

    Returns the spec and the indices of the hands it kept (a hand with no point on the canvas is
    dropped). A hand without a known side is taken as a right hand."""
    w, h = output_size(frame[0], frame[1], size, fit)
    sx, sy = w / float(frame[0]), h / float(frame[1])
    body_obj = None
    if body is not None:
        body_obj = {"format": "mediapipe33", "keypoints": _scaled(body, sx, sy, w, h).tolist()}
    hand_objs, kept = [], []
    for i, (side, kps) in enumerate(hands):
        scaled = _scaled(kps, sx, sy, w, h)
        if not (scaled[:, 2] > 0).any():
            continue
        kept.append(i)
        hand_objs.append(
            {"handedness": side if side in ("left", "right") else "right", "keypoints": scaled.tolist()}
        )
    spec = parse_spec({"width": w, "height": h, "body": body_obj, "hands": hand_objs, "prompt": prompt,
                       "negative_prompt": "", "seed": seed}, name=name)  # fmt: skip
    return spec, kept


def requests_from_manifest(
    manifest: str,
    image_ids: list[str] | None,
    size: int,
    split: str | None = DEFAULT_SPLIT,
    limit: int | None = None,
    seed: int = 0,
    fit: str | None = None,
) -> list[Request]:
    """One request per images row: the given `image_ids` (each must exist), else the ``ok`` rows of
    `split` ("all" or None: every split) in manifest order, the first `limit` of them, selected by
    `generation.selection` exactly as `handfirst-gen evaluate` selects them. Poses are scaled from the
    original frame to the whole frame at `output_size(W, H, size, fit)`: with `fit` (the body model's
    training framing, `size` its training side) at the scale the body trainer saw such a frame, so hands
    are as large as in training; without, at longer side `size`. The stage-1 captions are the
    manifest's hand captions, the prompt its image caption."""
    import pyarrow.dataset as pads

    from manifests.decode import body_keypoints, hand_keypoints
    from manifests.reader import open_manifest

    from .selection import SelectionError, select_rows

    m = open_manifest(manifest)
    columns = ["image_id", "width", "height", "caption", "label", "status", "split", "body_keypoints"]
    if image_ids:
        rows = m.lookup("images", image_ids, columns).to_pylist()
        found = {r["image_id"] for r in rows}
        missing = [i for i in image_ids if i not in found]
        if missing:
            raise RequestError(f"{m.url}: no image(s) {missing} in the images table")
        order = {i: k for k, i in enumerate(image_ids)}
        rows.sort(key=lambda r: order[r["image_id"]])
        rows = rows[:limit] if limit else rows
    else:
        try:
            rows = select_rows(m, columns, split, ("ok",), limit)
        except SelectionError as exc:
            raise RequestError(str(exc)) from None
    ids = [r["image_id"] for r in rows]
    hand_rows = m.read("hands", ["image_id", "hand_index", "handedness", "keypoints", "caption"],
                       filter=pads.field("image_id").isin(ids)).to_pylist()  # fmt: skip
    by_image: dict[str, list[dict]] = {}
    for hr in sorted(hand_rows, key=lambda r: (r["image_id"], r["hand_index"])):
        by_image.setdefault(hr["image_id"], []).append(hr)
    out = []
    for row in rows:
        image_id = row["image_id"]
        if row["status"] == "error":
            raise RequestError(f"{m.url}: image {image_id} has status error; it has no pose to regenerate")
        if not row["width"] or not row["height"]:
            raise RequestError(f"{m.url}: image {image_id} has no width/height")
        body = body_keypoints(row) if row.get("body_keypoints") is not None else None
        hands = [(hr["handedness"], hand_keypoints(hr)) for hr in by_image.get(image_id, [])]
        try:
            spec, kept = _spec_from_pose(image_id, (row["width"], row["height"]), size, body, hands,
                                         row["caption"] or "a photo of a person", seed, fit)  # fmt: skip
        except SpecError as exc:
            raise RequestError(f"{m.url}: image {image_id}: {exc}") from None
        captions = [by_image[image_id][k]["caption"] or "" for k in kept]
        source = {
            "kind": "manifest",
            "manifest": m.url,
            "image_id": image_id,
            "frame": [row["width"], row["height"]],
            "framing": {"side": size, "fit": fit},
        }
        out.append(Request(spec, source, hand_prompts=captions))
    return out


def request_from_image(path: str, size: int | None, seed: int = 0, prompt: str | None = None, gesture=None,
                       annotator=None) -> Request:  # fmt: skip
    """Poses of a photo through prep's detectors (MediaPipe Pose, then Hands with the wrist pass)."""
    from prep.captions import image_caption
    from prep.config import PrepConfig
    from prep.imageio import load_image

    from .evaluate.detect import get_detector

    try:
        decoded, _ = load_image(path, PrepConfig().max_pixels)
    except Exception as exc:  # noqa: BLE001 - prep raises its own error types for unreadable images
        raise RequestError(f"{path}: cannot read the photo ({type(exc).__name__}: {exc})") from None
    image = decoded.pixels
    hands, body = (annotator or get_detector(PrepConfig())).detect(image)
    if not hands and body is None:
        raise RequestError(f"{path}: no hands and no body pose detected; nothing to regenerate")
    h, w = image.shape[:2]
    sides = [hd.handedness for hd in hands]
    name = os.path.splitext(os.path.basename(path))[0]
    spec, _ = _spec_from_pose(name, (w, h), size or max(w, h), None if body is None else body.keypoints,
                           [(hd.handedness, hd.keypoints) for hd in hands],
                           prompt or image_caption(gesture, sides), seed)  # fmt: skip
    return Request(spec, {"kind": "image", "path": os.path.abspath(path), "detected_hands": len(hands),
                          "detected_body": body is not None, "photo_size": [w, h]})  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Models


def weights_fingerprint(folder: str) -> str:
    """sha1 over every file's relative path and size and the first and last MiB of each weight file:
    cheap even for full-size models, and it changes when the weights do."""
    digest = hashlib.sha1()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "validation", "latent_cache"))
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            size = os.path.getsize(path)
            digest.update(f"{rel}:{size}\n".encode())
            if name.endswith((".safetensors", ".bin", ".json", ".txt")):
                with open(path, "rb") as f:
                    digest.update(f.read(1 << 20))
                    if size > 2 << 20:
                        f.seek(-(1 << 20), os.SEEK_END)
                        digest.update(f.read())
    return digest.hexdigest()


def load_pipeline(hand_model: str, body_model: str, settings: GenerateSettings):
    """The two-stage pipeline from two run folders, on the settings' device and dtype."""
    import torch

    from .pipeline_two_stage import TwoStageHandBodyPipeline

    # A name -> dtype table, not getattr(torch, ...): the setting may come from a replayed sidecar.
    dtypes = {name: getattr(torch, name) for name in DTYPES}
    if settings.dtype not in dtypes:
        raise ValueError(f"dtype: {settings.dtype!r} is not one of {', '.join(DTYPES)}")
    dtype = dtypes[settings.dtype]
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # float32 is the default: only ask for another dtype, which keeps older and newer diffusers quiet.
    load = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    pipe = TwoStageHandBodyPipeline.from_runs(
        hand_model, body_model, crop_margin=settings.crop_margin, **load
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def model_record(pipe, hand_model: str, body_model: str) -> dict:
    return {
        "hand": {"path": os.path.abspath(hand_model), "fingerprint": weights_fingerprint(hand_model)},
        "body": {"path": os.path.abspath(body_model), "fingerprint": weights_fingerprint(body_model)},
        "crop_margin": pipe.config.crop_margin,
        "hand_crop_size": pipe.hand_crop_size,
        "body_size_multiple": pipe.size_multiple,
    }


def body_resolution(pipe) -> int:
    """The body model's training size in pixels (its UNet's sample size x the VAE factor)."""
    return int(pipe.unet.config.sample_size) * pipe.vae_scale_factor


def versions() -> dict:
    """Versions that decide the pixels: the modules' own ``__version__`` (e.g. torch's build tag)."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "numpy"):
        out[pkg] = getattr(importlib.import_module(pkg), "__version__", None)
    for dist in ("handfirst", "mediapipe"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


# ---------------------------------------------------------------------------------------------------
# One image


def hand_prompts_for(request: Request, settings: GenerateSettings) -> list[str]:
    from prep.captions import hand_caption

    if settings.hand_prompt is not None:
        return [settings.hand_prompt] * len(request.spec.hands)
    if request.hand_prompts is not None and settings.gesture is None:
        return list(request.hand_prompts)
    return [hand_caption(settings.gesture, h.handedness) for h in request.spec.hands]


def call_arguments(request: Request, settings: GenerateSettings) -> dict:
    """The exact keyword arguments of the pipeline call (recorded in the sidecar)."""
    spec = request.spec
    seed = settings.seed if settings.seed is not None else spec.seed
    return {
        "prompt": settings.prompt if settings.prompt is not None else spec.prompt,
        "negative_prompt": settings.negative_prompt
        if settings.negative_prompt is not None
        else spec.negative_prompt,
        "hand_prompt": hand_prompts_for(request, settings),
        "num_inference_steps": settings.steps,
        "hand_num_inference_steps": settings.steps if settings.hand_steps is None else settings.hand_steps,
        "guidance_scale": settings.guidance_scale,
        "hand_guidance_scale": settings.hand_guidance_scale,
        "pose_guidance_scale": settings.pose_guidance_scale,
        "controlnet_conditioning_scale": settings.conditioning_scale,
        "uncond_condition": settings.uncond_condition,
        "mask_threshold": settings.mask_threshold,
        "blend": settings.blend_config().to_dict(),
        "pixel_composite": settings.pixel_composite,
        "feather": settings.feather,
        "small_hands": settings.small_hands,
        "min_hand_size": settings.min_hand_size,
        "mask_fallback": settings.mask_fallback,
        "min_mask_coverage": settings.min_mask_coverage,
        "overlap_order": settings.overlap_order,
        "hand_encoding": settings.hand_encoding,
        "seed": int(seed),
        "max_pixels": settings.max_pixels,
        "max_pixel_steps": settings.max_pixel_steps,
    }


def _save(array: np.ndarray, path: str) -> None:
    tmp = path + ".tmp.png"
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)  # a crash never leaves a half-written image that resume would take as done


def output_paths(out_dir: str, name: str) -> dict[str, str]:
    """Where the files of request `name` go: image, sidecar, overview, stage1 folder, sidecar temp file.

    Raises `manifests.names.UnsafeNameError` for a name that is not a safe file name."""
    sidecar = path_in(out_dir, name, ".json")
    return {
        "image": path_in(out_dir, name, ".png"),
        "sidecar": sidecar,
        "overview": path_in(out_dir, name, "_overview.png"),
        "stage1": path_in(out_dir, name, "_stage1"),
        # Hidden, so that a crash never leaves a file that looks like a finished sidecar.
        "sidecar_tmp": os.path.join(out_dir, f".{os.path.basename(sidecar)}.tmp"),
    }


def is_done(out_dir: str, name: str) -> bool:
    paths = output_paths(out_dir, name)
    return os.path.isfile(paths["image"]) and os.path.isfile(paths["sidecar"])


def detect_for_overview(image: np.ndarray, annotator) -> tuple:
    hands, body = annotator.detect(image)
    note = f"found {len(hands)} hands" + (" + body" if body is not None else "")
    return (None if body is None else body.keypoints, [h.keypoints for h in hands], note)


def generate_one(pipe, request: Request, settings: GenerateSettings, out_dir: str, models: dict,
                 annotator=None) -> dict:  # fmt: skip
    """Run the pipeline for one request and write its files; returns the sidecar dict."""
    spec = request.spec
    name = request.name
    settings.validate()
    paths = output_paths(out_dir, name)  # refuses an unsafe name before any work
    kwargs = call_arguments(request, settings)
    out = pipe(
        hands=[h.keypoints for h in spec.hands], handedness=[h.handedness for h in spec.hands],
        body_keypoints=spec.body, body_format=spec.body_format or "mediapipe33", width=spec.width,
        height=spec.height, output_type="np", return_masks=True, **kwargs,
    )  # fmt: skip
    image = (out.images[0] * 255).round().astype(np.uint8)
    os.makedirs(out_dir, exist_ok=True)
    stage1 = paths["stage1"]
    os.makedirs(stage1, exist_ok=True)
    for idx, img, mask in zip(out.hand_indices, out.hand_images, out.hand_masks):
        _save(img, os.path.join(stage1, f"hand{idx}.png"))
        _save(mask.astype(np.uint8) * 255, os.path.join(stage1, f"hand{idx}_mask.png"))
    _save(out.hand_canvas, os.path.join(stage1, "canvas.png"))
    _save(out.hand_mask.astype(np.uint8) * 255, os.path.join(stage1, "canvas_mask.png"))

    from .overview import overview_sheet

    detected = detect_for_overview(image, annotator) if annotator is not None else None
    captions = [
        f"hand {i} {spec.hands[i].handedness[0].upper()} ({src})"
        for i, src in zip(out.hand_indices, out.mask_sources)
    ]
    sheet = overview_sheet(spec.width, spec.height, spec.body, spec.body_format, [h.keypoints for h in spec.hands],
                           out.hand_images, out.hand_masks, captions, out.hand_canvas, out.hand_mask,
                           out.keep_masks, image, detected)  # fmt: skip
    _save(sheet, paths["overview"])

    sidecar = {
        "name": name,
        "image": f"{name}.png",
        "width": spec.width,
        "height": spec.height,
        "source": request.source,
        "spec": spec.to_dict(),
        "hand_prompts": request.hand_prompts,
        "settings": settings.to_dict(),
        "call": kwargs,
        "models": models,
        "result": {
            "hand_indices": out.hand_indices,
            "paste_order": out.paste_order,
            "skipped_hands": out.skipped_hands,
            "mask_sources": out.mask_sources,
            "hand_boxes": [b.box for b in out.hand_boxes],
            "hand_mask_pixels": int(out.hand_mask.sum()),
            "timings": {k: round(v, 4) for k, v in out.timings.items()},
            "detected": None if detected is None else detected[2],
        },
        "files": {
            "overview": f"{name}_overview.png",
            "stage1": f"{name}_stage1/",
        },
        "device": str(pipe.device),
        "dtype": settings.dtype,
        "versions": versions(),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = paths["sidecar_tmp"]
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(sidecar, f, indent=2, default=str)
    # The PNG goes last but one and the sidecar last: `is_done` needs both, so resume redoes a
    # request that was interrupted anywhere in between.
    _save(image, paths["image"])
    os.replace(tmp, paths["sidecar"])
    return sidecar


def request_from_sidecar(path: str) -> tuple[Request, GenerateSettings, dict]:
    """A sidecar -> (the request, its settings, its model record) to redo the image exactly.

    A sidecar is read only when the user names it (``--replay``), so the model folders it records are
    loaded as the user's own choice, like ``--hand-model``/``--body-model`` (diffusers itself imports
    no module a model folder names). Its ``name`` is only ever a file name: an unsafe one is refused
    here, and every path is made by `output_paths`.
    """
    data = read_json_file(path, RequestError, "sidecar")
    try:
        if not isinstance(data, dict):
            raise TypeError(f"a JSON object, got {type(data).__name__}")
        spec = parse_spec(data["spec"], name=data["name"])
        # Sidecars written before `min_core` existed eroded without a cap: replay them that way.
        settings = GenerateSettings.from_dict({"min_core": 0, **data["settings"]})
        return Request(spec, data.get("source") or {}, data.get("hand_prompts")), settings, data["models"]
    except SpecError as exc:
        raise RequestError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise RequestError(f"{path}: not a generate sidecar ({type(exc).__name__}: {exc})") from None


__all__ = [
    "GenerateSettings",
    "Request",
    "RequestError",
    "HandSpec",
    "requests_from_specs",
    "requests_from_manifest",
    "request_from_image",
    "request_from_sidecar",
    "load_pipeline",
    "generate_one",
    "is_done",
]
