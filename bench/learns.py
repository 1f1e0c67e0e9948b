"""Does the generator learn? The `mini` chain trained from scratch on hagrid_mini, with numbers and a picture.

From an empty folder, one process runs and times:

1. prep: the hagrid_mini manifest (`prep.run`, 40 photos, 46 hands; not part of the chain's budget);
2. train-vae: a 3.9M-parameter `AutoencoderKL` (SD layout) on the hand crops (64 px) and 64 px squares
   of the images fitted to stage 2's side (160 px); reconstruction PSNR on the held-in crops;
3. train-hand (stage 1) from that folder (`--preset mini --pretrained`), 64 px crops, cached latents;
   then samples for every training pose (one seed for all, repeated for each of `SEEDS`), scored with
   prep's own hand detector on
   the sample upscaled as the wrist pass upscales its crops (`CropBox` to ``wrist_crop_min_size``, the
   palm detector then searching it as prep does): detection share against the real crops at the same
   resolution, PCK@0.2 against the conditioning keypoints, predicted mask IoU with the manifest mask;
   the same on unseen poses (FreiHAND `keypoints_gt` hands, training poses rotated by 30 degrees and
   mirrored) and pose control (same seed, two poses: PCK against its own pose > against the other);
4. train-body (stage 2) from the same folder at 160 px, base UNet trained too (it is from scratch), and
   the one-stage baseline: the same trainer and settings on the pose and hand skeletons only. The
   three trainings run side by side in spawned processes, one thread each, since they need only the
   VAE; each scoring starts in its own process as soon as its model is trained;
5. stage 2 alone on the training rows, drawn around each row's own hands: prep's body detector finds a
   body, body PCK@0.2 against the conditioning pose, and pose control (same seed, another row's pose);
6. the paper's comparison on the first training rows, one seed, each drawn on the canvas stage 2 was
   trained on (``--framing hands``: the training square around the hands): `handfirst-gen baseline`
   with the one-stage baseline and `handfirst-gen generate` under blend none / fixed / sequential,
   `evaluate` of each (through the window each sidecar records), of the real photos and of the real
   squares through the VAE, and the `--compare` table.

Writes bench/results/learns.json (figures, targets met or not, the paper's predictions held or not,
``comparison.<row>.<column>``, phase wall and CPU times, machine and load), bench/results/learns.png
(curves, reconstructions, stage-1 samples with skeletons and masks, the comparison's images) and
bench/results/learns_compare.md.

    .venv/bin/python bench/learns.py [--work DIR] [--device cpu|cuda] [--quick]

``--device cuda`` without a CUDA device records the CUDA run as not run and exits 0. ``--quick`` runs
every phase with a few steps, to check the plumbing (its results go to learns_quick.*).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench._common import portable  # noqa: E402

logger = logging.getLogger("bench.learns")

DATA = os.path.join(ROOT, "..", "shared", "data")
RESULTS = os.path.join(ROOT, "bench", "results")
BLENDS = ("none", "fixed", "sequential")
TARGETS = {
    "vae_psnr_db": 22.0,
    "stage1_detection_ratio": 0.7,  # samples' detection share / real crops' detection share
    "stage1_pck_0.2": 0.5,
    "stage1_mask_iou": 0.5,
    "stage2_body_detected_share": 0.5,  # stage 2 alone around the manifest's hands, training rows
    "stage2_body_pck_0.2": 0.5,
}
# Stage-1 scores are pooled over these seeds. Every sample of one seed starts from the same noise, so a
# seed's count moves all 46 samples together.
SEEDS = (0, 1, 2, 3)

# Settings of the mini chain. CPU budget: the whole chain (VAE, both stages, the baseline, generation and
# scoring) in about 90 minutes on 2 cores, stage 2 in at most about 40 minutes of one core. The
# measurements behind them are in the README, "Does it learn?".
CHAIN = {
    "cpu": {
        # 64 px crops: 8x8 latents still separate the 21 keypoint heatmaps. The VAE bounds what stage 1
        # can draw: L1 + edge loss, 5000 steps. The images are cut from frames fitted to stage 2's side,
        # the scale stage 2 draws bodies at. In bf16 (on this CPU's AMX units) a step takes 0.51x the
        # float32 time (bench/cpu_precision.py): 17 to 19 minutes on 2 threads in the chain, against 37.
        "vae": {
            "steps": 5000,
            "precision": "bf16",
            "batch_size": 8,
            "learning_rate": 1e-3,
            "lr_schedule": "cosine",
            "lr_warmup_steps": 50,
            "resolution": 64,
            "image_resolution": 160,
        },
        # 8.6M-parameter UNet at ~3.6 steps/s on one idle thread (batch 8, cached latents): 5000 steps
        # (~870 epochs of the 46 crops), cosine-decayed from the mini rate 5e-4, on zero terminal SNR
        # with v-prediction, so the starting noise does not set the image's brightness. 8000 and 6000
        # steps gave 144/184 detected (PCK 0.96, 0.94); 5000 with fused AdamW 153/184 (ratio 0.93,
        # PCK 0.95, mask IoU 0.85) in 24 minutes beside stage 2, and it lies on the chain's critical path.
        "hand": {
            "steps": 5000,
            "batch_size": 8,
            "lr_schedule": "cosine",
            "lr_warmup_steps": 100,
            "prediction_type": "v_prediction",
            "zero_terminal_snr": True,
        },
        # 160 px images (20x20 latents): the mini VAE keeps a body at 160 px (real rows through it: body
        # found 60%, PCK 0.64) but not at 128 px (58%, 0.47, under the PCK target). The base UNet is
        # trained with the ControlNet, since it is from scratch and a frozen random decoder cannot paint.
        # On zero terminal SNR with v-prediction, as stage 1. 2500 steps left blotchy shapes (bodies
        # found 32%, PCK 0.14); 4000 (~300 epochs of the 39 rows with a body) drew the training people
        # (58%, PCK 0.58) in a side run. With cached latents (1.2x a step) the float32 chain took 58
        # minutes of one core beside the other trainings, and met the three stage-2 targets (50%, PCK
        # 0.54). bf16 with float32 attention takes about 0.9x the float32 step (bench/cpu_precision.py):
        # 53 minutes beside two trainings (53%, PCK 0.61; pose control, each row once with another
        # row's pose: a body in 18 of 38 draws, PCK 0.19 to the pose given against 0.12 to the row's
        # own). Those runs' processes carried Dask's allocator setting (prep.cluster.environ_restored);
        # without it, and with fused AdamW, the committed run took 43 minutes of one core (53%, PCK 0.54;
        # pose control a body in 13 of 38 draws, PCK 0.24 against 0.19). Stage 1's tiny 8x8 latents gain
        # nothing from bf16, so stage 1 stays float32.
        "body": {
            "steps": 4000,
            "precision": "bf16",
            "batch_size": 3,
            "resolution": 160,
            "lr_schedule": "cosine",
            "lr_warmup_steps": 100,
            "prediction_type": "v_prediction",
            "zero_terminal_snr": True,
        },
        "sample_steps": 25,
        "generate_rows": 16,
    },
    "cuda": {
        "vae": {
            "steps": 4000,
            "batch_size": 32,
            "learning_rate": 1e-3,
            "resolution": 64,
            "image_resolution": 256,
        },
        "hand": {
            "steps": 10000,
            "batch_size": 32,
            "lr_warmup_steps": 200,
            "prediction_type": "v_prediction",
            "zero_terminal_snr": True,
        },
        "body": {
            "steps": 4000,
            "batch_size": 16,
            "resolution": 256,
            "lr_schedule": "cosine",
            "lr_warmup_steps": 100,
            "prediction_type": "v_prediction",
            "zero_terminal_snr": True,
        },
        "sample_steps": 25,
        "generate_rows": 39,
    },
    "quick": {
        "vae": {
            "steps": 10,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "resolution": 64,
            "image_resolution": 128,
            "precision": "bf16",
        },
        "hand": {
            "steps": 10,
            "batch_size": 8,
            "lr_warmup_steps": 0,
            "prediction_type": "v_prediction",
            "zero_terminal_snr": True,
        },
        "body": {
            "steps": 4,
            "batch_size": 2,
            "resolution": 128,
            "precision": "bf16",
            "lr_warmup_steps": 0,
            "prediction_type": "v_prediction",
            "zero_terminal_snr": True,
        },
        "sample_steps": 3,
        "generate_rows": 4,
    },
}
COMMON = {"log_every": 10}
# Stage 2's training settings beside CHAIN's, shared by the one-stage baseline and bench/body_sweep.py. The
# base UNet is trained with the ControlNet, since it is from scratch; each image's VAE posterior is cached.
BODY_TRAINING = {
    "train_base_unet": True,
    "cache_latents": True,
    "validate_every": 500,
    "checkpoint_every": 250,
    "num_validation_images": 2,
}
# Text guidance of every sampling in the chain (stage 1's and stage 2's scoring, generate for both stages
# and the baseline): SD's 7.5 over-drives these small from-scratch models.
GUIDANCE = 3.0
# The one-stage baseline (the paper's OpenPose-full ControlNet at our scale): stage 2's trainer and
# settings, conditioned on the pose and the hand skeletons only, as bench/ablation.py trains it.
BASELINE = {"condition_channels": ("pose",), "draw_hand_skeletons": True}


def cpu_time() -> float:
    """CPU seconds of this process and of its children that have ended (the ``handfirst-gen`` processes
    a phase runs), so that a phase's CPU time counts the work it hands to the CLI."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Phases:
    """Phase results and wall times kept in WORK/phases.json, so that ``--resume`` skips finished phases
    and a training phase cut off mid-way continues from its latest checkpoint (its time accumulates)."""

    def __init__(self, work: str, resume: bool):
        self.work = work
        self.path = os.path.join(work, "phases.json")
        self.state = {"seconds": {}, "cpu_seconds": {}, "done": {}, "invocations": 0, "wall_s": 0.0}
        if resume and os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.state.update(json.load(f))
        self.state["invocations"] += 1
        self.wall_before, self.started = self.state["wall_s"], time.perf_counter()
        self.save()

    @property
    def seconds(self) -> dict:
        return {k: round(v, 1) for k, v in self.state["seconds"].items()}

    def save(self) -> None:
        self.state["wall_s"] = self.wall_before + time.perf_counter() - self.started
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(self.state, f, indent=2, default=float)

    def add_time(self, name: str, wall: float, cpu: float) -> None:
        for key, value in (("seconds", wall), ("cpu_seconds", cpu)):
            self.state[key][name] = self.state[key].get(name, 0.0) + value
        self.state.setdefault("load_at_end", {})[name] = round(os.getloadavg()[0], 2)

    def run(self, name: str, fn, *args, **kwargs):
        """`fn`'s JSON-ready result, from an earlier invocation when that one finished the phase."""
        if name in self.state["done"]:
            logger.info("phase %s: done in an earlier invocation", name)
            return self.state["done"][name]
        start, cpu = time.perf_counter(), cpu_time()
        logger.info("phase %s ...", name)
        try:
            out = fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            self.add_time(name, elapsed, cpu_time() - cpu)
            self.save()
        self.state["done"][name] = out
        self.save()
        logger.info("phase %s done in %.0f s (load %.2f)", name, elapsed, os.getloadavg()[0])
        return out

    def start(self, name: str, fn, *args, threads: int = 1):
        """Start `fn(*args)` (a module-level function returning a JSON-ready result) in a spawned process
        on `threads` threads, its output going to ``WORK/NAME.log``, unless an earlier invocation finished
        phase `name`: the handle `join` takes."""
        if name in self.state["done"]:
            return None
        import multiprocessing

        result_path = os.path.join(self.work, f"{name}.result.json")
        if os.path.exists(result_path):
            os.remove(result_path)
        log_path = os.path.join(self.work, f"{name}.log")
        proc = multiprocessing.get_context("spawn").Process(
            target=in_child, args=(fn, args, log_path, result_path, threads), name=name
        )
        proc.start()
        logger.info("phase %s started in process %d on %d thread(s)", name, proc.pid, threads)
        return proc, result_path

    def join(self, name: str, handle):
        """Wait for a phase `start` began; its result, timed by the child itself (wall and CPU seconds)."""
        if handle is None:
            return self.state["done"][name]
        proc, result_path = handle
        proc.join()
        if proc.exitcode != 0 or not os.path.isfile(result_path):
            raise RuntimeError(
                f"phase {name} failed (exit code {proc.exitcode}): see {name}.log in the work folder"
            )
        with open(result_path, encoding="utf-8") as f:
            out = json.load(f)
        self.add_time(name, out["wall_s"], out["cpu_s"])
        self.state["done"][name] = out["result"]
        self.save()
        logger.info("phase %s done in %.0f s (%.0f s of CPU)", name, out["wall_s"], out["cpu_s"])
        return out["result"]

    @staticmethod
    def startable(waiting: dict, done, busy: int, cores: int) -> list[str]:
        """The phases of `waiting` ({name: (fn, args, needs, threads)}, in priority order) to start now,
        with `busy` of `cores` threads taken: each whose needs are `done` while its threads fit beside
        the phases already running and those started before it (a later phase may fill a gap an earlier
        one does not fit), or the first ready one when nothing runs, so that a phase wider than the
        machine still runs."""
        out = []
        for name, (_, _, needs, threads) in waiting.items():
            if all(n in done for n in needs) and (busy + threads <= cores or (busy == 0 and not out)):
                out.append(name)
                busy += threads
        return out

    def run_graph(self, graph: dict, cores: int, on_done=None, poll_s: float = 2.0) -> None:
        """Run the phases of `graph` ({name: (fn, args, names it needs, threads)}, in priority order)
        each in a spawned process (`start`) as soon as the phases it needs are done and its threads fit
        in `cores` beside the running ones (`startable`); `join` each as it ends, calling
        `on_done(name)`. A failed phase raises `join`'s error (the others then stop with this process).
        More threads than cores would only slow every phase: three one-thread trainings on two cores
        took 1.3x the CPU per step that each took with a core to itself."""
        handles, waiting = {}, dict(graph)
        while waiting or handles:
            busy = sum(graph[n][3] for n in handles)
            for name in self.startable(waiting, self.state["done"], busy, cores):
                fn, args, _, threads = waiting.pop(name)
                handles[name] = self.start(name, fn, *args, threads=threads)
            if waiting and not handles:
                raise ValueError(f"phases {sorted(waiting)} need phases that are not in the graph")
            ended = [n for n, h in handles.items() if h is None or not h[0].is_alive()]
            for name in ended:
                self.join(name, handles.pop(name))
                if on_done:
                    on_done(name)
            if not ended:
                time.sleep(poll_s)


def open_work(work: str, resume: bool) -> tuple[Phases, float]:
    """The work folder's `Phases` (the folder emptied first unless `resume`) and the 1-minute load
    average before anything ran."""
    if os.path.exists(work) and not resume:
        shutil.rmtree(work)
    os.makedirs(work, exist_ok=True)
    load_before = os.getloadavg()[0]
    return Phases(work, resume), load_before


def in_child(fn, args: tuple, log_path: str, result_path: str, threads: int = 1) -> None:
    """A `Phases.start` child: `fn(*args)` on `threads` threads (the CLI processes it runs too), its
    output appended to `log_path`, then {"result", "wall_s", "cpu_s"} written to `result_path`. It
    stops when its parent is gone, so that a cut-off chain leaves nothing writing into its run folders."""
    import threading

    import torch

    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (the child's stdout and stderr until it exits)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    parent = os.getppid()

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(5)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the handfirst-gen processes `cli` starts
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    start, cpu = time.perf_counter(), cpu_time()
    result = fn(*args)
    with open(result_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"result": result, "wall_s": time.perf_counter() - start, "cpu_s": cpu_time() - cpu}, f)
    os.replace(result_path + ".tmp", result_path)


def train_body_phase(config) -> dict:
    from generation.training.body import train_body

    return dataclasses.asdict(train_body(config))


def train_hand_phase(config) -> dict:
    from generation.training.hand import train_hand

    return dataclasses.asdict(train_hand(config))


def score_stage1_phase(hand_run: str, manifest: str, res: int, steps: int, pictures: str) -> dict:
    s1, s1_pics = stage1(hand_run, manifest, res, steps)
    save_pictures(
        pictures,
        crops=[c["crop"] for c in s1_pics["cases"]],
        keypoints=[c["keypoints"] for c in s1_pics["cases"]],
        manifest_masks=[c["mask"] for c in s1_pics["cases"]],
        images=s1_pics["images"],
        masks=s1_pics["masks"],
    )
    return s1


def score_stage2_phase(body_run: str, manifest: str, steps: int, pictures: str) -> dict:
    s2, s2_pics = stage2(body_run, manifest, steps)
    save_pictures(pictures, **s2_pics)
    return s2


# ---------------------------------------------------------------------------------------------------
# Stage-1 scoring


def detect_hands(detector, image, min_size: int) -> list:
    """prep's hand detector on an (S, S, 3) uint8 sample upscaled as the wrist pass upscales its crops
    (a `CropBox` over the whole sample, at least ``wrist_crop_min_size`` px); keypoints (21, 2) in sample px."""
    from manifests.geometry import CropBox
    from prep.crops import warp_crop

    side = image.shape[0]
    box = CropBox(0.0, 0.0, float(side), max(int(min_size), side))
    return [box.to_image(h.keypoints)[:, :2] for h in detector.detect(warp_crop(image, box))]


def keypoint_errors(pred, target) -> np.ndarray:
    """(21,) distances of `pred` to `target` keypoints / the target's box size (PCK's normaliser)."""
    from manifests.matching import Instance

    t = Instance(np.asarray(target)[:, :2])
    return np.linalg.norm(np.asarray(pred)[:, :2] - t.keypoints[:, :2], axis=1) / t.box_size()


def best_match(found: list, target):
    """The detected hand nearest to `target` (mean normalised error), or None."""
    if not found:
        return None
    return min(found, key=lambda p: float(keypoint_errors(p, target).mean()))


def mask_iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def score_set(detector, min_size: int, images, poses, masks=None) -> dict:
    """Detection share, PCK@0.2 on the detected hands, mean mask IoU (when `masks` = (pred, target) pairs)."""
    found, pcks, per = 0, [], []
    for image, pose in zip(images, poses):
        match = best_match(detect_hands(detector, image, min_size), pose)
        per.append(match)
        if match is not None:
            found += 1
            pcks.append(float((keypoint_errors(match, pose) <= 0.2).mean()))
    out = {
        "n": len(images),
        "detected": found,
        "detected_share": found / max(len(images), 1),
        "pck_0.2": float(np.mean(pcks)) if pcks else None,
    }
    if masks is not None:
        out["mask_iou"] = float(np.mean([mask_iou(p, t) for p, t in masks]))
    return out, per


def rotate_case(case: dict, degrees: float, res: int) -> dict:
    """A training pose (and its mask) rotated about the crop centre."""
    from PIL import Image

    a = np.deg2rad(degrees)
    c = res / 2.0
    kps = case["keypoints"].copy()
    x, y = kps[:, 0] - c, kps[:, 1] - c
    kps[:, 0], kps[:, 1] = c + np.cos(a) * x - np.sin(a) * y, c + np.sin(a) * x + np.cos(a) * y
    # PIL rotates counter-clockwise on screen for positive angles; the points above turn clockwise on
    # screen (y down) for positive a, so the mask turns by -degrees.
    mask = (
        np.asarray(Image.fromarray(case["mask"].astype(np.uint8) * 255).rotate(-degrees, Image.BILINEAR))
        > 127
    )
    return {**case, "keypoints": kps, "mask": mask}


def mirror_case(case: dict, res: int) -> dict:
    swap = {"left": "right", "right": "left"}
    kps = case["keypoints"].copy()
    kps[:, 0] = res - kps[:, 0]
    caption = " ".join(swap.get(w, w) for w in case["caption"].split(" "))
    return {**case, "keypoints": kps, "mask": case["mask"][:, ::-1].copy(), "caption": caption}


def freihand_cases(res: int, caption: str) -> list[dict]:
    """FreiHAND test hands (keypoints_gt), framed like prep's crops (square box, same margin), at `res`."""
    from manifests.geometry import square_crop_box
    from prep.config import PrepConfig

    path = os.path.join(DATA, "keypoints_gt", "freihand", "test_freihand.json")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        coco = json.load(f)
    margin = PrepConfig().crop_margin
    cases = []
    for ann in coco["annotations"]:
        kps = np.asarray(ann["keypoints"], np.float64).reshape(21, 3)
        box = square_crop_box(kps[:, :2], size=res, margin=margin)
        crop_kps = box.to_crop(kps[:, :2])
        cases.append(
            {
                "keypoints": np.concatenate([crop_kps, np.ones((21, 1))], axis=1),
                "caption": caption,
                "mask": None,
                "hand_id": f"freihand/{ann['id']}",
            }
        )
    return cases


def sample_cases(pipe, cases: list[dict], steps: int, seed: int, guidance: float, batch: int = 16):
    """One sample per case, every one from the same seed (the same starting noise): `batch` cases a call,
    each with its own generator seeded `seed`, so a case draws what it would draw alone."""
    from generation.guards import make_generator

    images, masks = [], []
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        out = pipe(
            [case["caption"] for case in chunk],
            keypoints=np.stack([case["keypoints"] for case in chunk]),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[make_generator(seed) for _ in chunk],
            output_type="np",
        )
        images += [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in out.images]
        masks += [np.asarray(m, bool) for m in out.masks_binary]
    return images, masks


def pooled(per_seed: list[dict]) -> dict:
    """`score_set` results of several seeds as one: detections and PCK over every sample, mask IoU the mean."""
    n = sum(r["n"] for r in per_seed)
    found = sum(r["detected"] for r in per_seed)
    pcks = [r["pck_0.2"] * r["detected"] for r in per_seed if r["detected"]]
    out = {
        "n": n,
        "detected": found,
        "detected_share": found / max(n, 1),
        "pck_0.2": sum(pcks) / found if found else None,
        "detected_per_seed": [r["detected"] for r in per_seed],
    }
    if "mask_iou" in per_seed[0]:
        out["mask_iou"] = float(np.mean([r["mask_iou"] for r in per_seed]))
    return out


def pose_control(matches: list, poses: list) -> tuple[list[float], list[float]]:
    """Samples of one seed share their starting noise, so sample i and pose j != i differ only in the
    pose: PCK of each detected hand against its own pose and against every other pose."""
    own, other = [], []
    for i, match in enumerate(matches):
        if match is None:
            continue
        for j in range(len(poses)):
            if j != i:
                own.append(float((keypoint_errors(match, poses[i]) <= 0.2).mean()))
                other.append(float((keypoint_errors(match, poses[j]) <= 0.2).mean()))
    return own, other


def stage1(hand_run: str, manifest: str, res: int, steps: int, seeds=SEEDS) -> tuple[dict, dict]:
    import torch

    from generation import HandGenerationPipeline
    from manifests.datasets import HandCropDataset
    from prep.config import PrepConfig
    from prep.hands import HandDetector

    torch.manual_seed(seeds[0])
    pipe = HandGenerationPipeline.from_pretrained(hand_run)
    pipe.set_progress_bar_config(disable=True)
    guidance = GUIDANCE
    cases = []
    for s in HandCropDataset(manifest, resolution=res, shuffle=False, rank=0, world_size=1):
        cases.append(
            {
                "keypoints": s["keypoints"].numpy().astype(np.float64),
                "caption": s["caption"] or "a hand",
                "mask": s["mask"][0].numpy() > 0.5,
                "hand_id": s["hand_id"],
                "crop": ((s["pixel_values"].permute(1, 2, 0).numpy() + 1) * 127.5)
                .round()
                .clip(0, 255)
                .astype(np.uint8),
            }
        )
    config = PrepConfig()
    detector = HandDetector(config)
    min_size = config.wrist_crop_min_size
    poses = [c["keypoints"] for c in cases]

    real, _ = score_set(detector, min_size, [c["crop"] for c in cases], poses)
    # The same crops through the VAE (posterior mode and back): what the detector sees at best in a
    # sample that reproduced its training latent exactly, so the VAE's share of a miss can be told apart.
    from generation.training.vae import from_uint8, reconstruct, to_uint8

    pixels = from_uint8([c["crop"] for c in cases])
    vae_recs, _ = score_set(detector, min_size, list(to_uint8(reconstruct(pipe.vae, pixels))), poses)

    def sample_and_score(vcases: list[dict]) -> tuple[dict, list, tuple]:
        """Every case sampled at each seed and scored: (pooled score, per-seed matches, seed 0's draws)."""
        targets = [c["keypoints"] for c in vcases]
        runs, matches, first, offsets = [], [], None, []
        for seed in seeds:
            images, masks = sample_cases(pipe, vcases, steps, seed, guidance)
            pairs = None if vcases[0]["mask"] is None else list(zip(masks, [c["mask"] for c in vcases]))
            scored, found = score_set(detector, min_size, images, targets, pairs)
            runs.append(scored)
            matches.append(found)
            first = first or (images, masks)
            if vcases[0].get("crop") is not None:
                offsets.append(np.mean([im.mean() - c["crop"].mean() for im, c in zip(images, vcases)]))
        out = pooled(runs)
        if offsets:
            # Mean grey level of the samples minus that of their real crops (0-255), per seed: a schedule
            # that leaks the image's low frequencies into t = T makes one seed's samples all too bright or dark.
            out["brightness_offset_per_seed"] = [round(float(o), 1) for o in offsets]
        if real["detected"]:
            out["detection_ratio_vs_real"] = out["detected_share"] / real["detected_share"]
        return out, matches, first

    train, matches, (images, masks) = sample_and_score(cases)
    own, other = [], []
    for found in matches:
        o, t = pose_control(found, poses)
        own, other = own + o, other + t
    control = {
        "pairs": len(own),
        "pck_own": float(np.mean(own)) if own else None,
        "pck_other": float(np.mean(other)) if other else None,
        "share_own_better": float(np.mean(np.asarray(own) > np.asarray(other))) if own else None,
    }

    unseen = {}
    variants = {
        "rotated_30": [rotate_case(c, 30.0, res) for c in cases],
        "mirrored": [mirror_case(c, res) for c in cases],
        "freihand": freihand_cases(res, "a right hand"),
    }
    for name, vcases in variants.items():
        if vcases:
            unseen[name] = sample_and_score(vcases)[0]
        else:
            unseen[name] = {"skipped": "no FreiHAND file under ../shared/data/keypoints_gt"}
    detector.close()
    result = {
        "real_crops": real,
        "vae_reconstructions": vae_recs,
        "training_poses": train,
        "pose_control": control,
        "unseen_poses": unseen,
        "sampling": {
            "steps": steps,
            "guidance_scale": guidance,
            "seeds": list(seeds),
            "resolution": res,
            "detector_upscale_px": min_size,
        },
    }
    pictures = {"cases": cases[:8], "images": images[:8], "masks": masks[:8]}
    return result, pictures


# ---------------------------------------------------------------------------------------------------
# Stage-2 scoring


def body_pck(detected, target, min_visibility: float, threshold: float = 0.2) -> float:
    """PCK of a detected MediaPipe-33 body against a target one, on COCO-17 keypoints, the target's
    keypoints below `min_visibility` left out, distances over the target's box size (as `evaluate`)."""
    from manifests.matching import Instance, mediapipe33_to_coco17

    t = mediapipe33_to_coco17(np.asarray(target, np.float64))
    inst = Instance(t, valid=t[:, 2] >= min_visibility)
    p = mediapipe33_to_coco17(np.asarray(detected, np.float64))
    err = np.linalg.norm(p[inst.valid, :2] - t[inst.valid, :2], axis=1) / inst.box_size()
    return float((err <= threshold).mean()) if err.size else 0.0


def stage2(
    body_run: str, manifest: str, steps: int, pairs: int | None = None, seed: int = 0
) -> tuple[dict, dict]:
    """Stage 2 alone on the training rows, each drawn around its own manifest hands at the training
    framing (`manifest_inputs`), scored with prep's body detector: detected share and PCK@0.2 against the
    conditioning pose; the same on the real rows at that framing; and pose control (the same seed, row
    i's caption and hands with row j's pose: PCK against the pose it was given vs row i's own). By
    default pose control draws every row once, each with another row's pose: 16 pairs found a body in 6
    to 8 draws, and the verdict flipped between runs."""
    import torch

    from generation.evaluate.run import EvalConfig
    from generation.pipelines.body import BodyOutpaintPipeline
    from generation.pipelines.body_inputs import manifest_inputs
    from generation.training.body_config import BodyTrainConfig
    from manifests.reader import open_manifest
    from prep.body import BodyPoseDetector
    from prep.config import PrepConfig

    pipe = BodyOutpaintPipeline.from_pretrained(body_run)
    pipe.set_progress_bar_config(disable=True)
    with open(os.path.join(body_run, "config.json"), encoding="utf-8") as f:
        record = json.load(f)
    trained, defaults = record["config"], BodyTrainConfig()
    side = int(record["data"]["resolution"])
    fit, crop = trained.get("fit", defaults.fit), trained.get("crop", defaults.crop)
    min_vis = EvalConfig.__dataclass_fields__["min_body_visibility"].default
    table = open_manifest(manifest).read("images", ["image_id", "body_keypoints"], status="ok")
    ids = [
        i
        for i, b in zip(table.column("image_id").to_pylist(), table.column("body_keypoints").to_pylist())
        if b is not None
    ]
    rows = [manifest_inputs(manifest, i, side, fit, crop) for i in ids]
    detector = BodyPoseDetector(PrepConfig())

    def draw(inp: dict, body) -> np.ndarray:
        out = pipe(
            inp["prompt"],
            body_keypoints=body,
            hand_image=inp["hand_image"],
            hand_mask=inp["hand_mask"],
            hand_keypoints=inp["hand_keypoints"],
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        )
        return (np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8)

    def score(images: list, targets: list) -> dict:
        found = [detector.detect(im) for im in images]
        pcks = [body_pck(d.keypoints, t, min_vis) for d, t in zip(found, targets) if d is not None]
        return {
            "n": len(images),
            "body_detected_share": sum(d is not None for d in found) / max(len(images), 1),
            "body_pck_0.2": float(np.mean(pcks)) if pcks else None,
        }

    poses = [r["body_keypoints"] for r in rows]
    real = score([r["hand_image"] for r in rows], poses)
    # The real rows through the VAE (posterior mode and back): the most any stage-2 sample from this VAE
    # can show the detector, so that the VAE's share of a miss can be told apart from stage 2's.
    from generation.training.vae import from_uint8, reconstruct, to_uint8

    with torch.no_grad():
        vae_real = score(
            list(to_uint8(reconstruct(pipe.vae, from_uint8([r["hand_image"] for r in rows])))), poses
        )
    drawings = [draw(r, r["body_keypoints"]) for r in rows]
    drawn = score(drawings, poses)
    own, other = [], []
    n = len(rows)
    pairs = min(n if pairs is None else pairs, n * (n - 1))
    for k in range(pairs):
        i, j = k % n, (k * 7 + 3) % n
        if i == j:
            j = (j + 1) % n
        found = detector.detect(draw(rows[i], poses[j]))
        if found is not None:
            own.append(body_pck(found.keypoints, poses[j], min_vis))
            other.append(body_pck(found.keypoints, poses[i], min_vis))
    detector.close()
    pictures = {"real": [r["hand_image"] for r in rows[:8]], "drawn": drawings[:8]}
    return {
        "training_rows": drawn,
        "real_rows": real,
        "vae_real_rows": vae_real,
        "pose_control": {
            "pairs": pairs,
            "detected": len(own),
            "pck_own": float(np.mean(own)) if own else None,
            "pck_other": float(np.mean(other)) if other else None,
        },
        "sampling": {
            "steps": steps,
            "guidance_scale": GUIDANCE,
            "seed": seed,
            "side": side,
            "fit": fit,
            "crop": crop,
        },
    }, pictures


def cli(*args: str) -> None:
    cmd = [os.path.join(os.path.dirname(sys.executable), "handfirst-gen"), *args]
    logger.info("%s", " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


# The rows of the paper's comparison, in table order (``real_vae``: the real frames at the generated
# size through the VAE, the most any generated image can show the detector), and the report columns
# kept for each as ``comparison.<row>.<column>`` in learns.json: hands found in their own crop box and
# their PCK, hands found in the whole image and their PCK, the blends' seam and fidelity, the body.
COMPARISON = ("real", "real_vae", "baseline", *BLENDS)
# The rows `generate_two_stage` writes and evaluates; `generate_baseline` does the baseline's.
TWO_STAGE_ROWS = tuple(n for n in COMPARISON if n != "baseline")
# What a phase run again with --redo must find gone: the folders whose files it would otherwise keep.
REDO_CLEARS = {
    "generate_two_stage": tuple(f"generated/{n}" for n in TWO_STAGE_ROWS if n != "real")
    + tuple(f"eval/{n}" for n in TWO_STAGE_ROWS),
    "generate_baseline": ("generated/baseline", "eval/baseline"),
    "two_stage": ("eval/compare",),
}
COMPARISON_COLUMNS = (
    "hands.crop_detected_share",
    "hands.crop_pck_0.2",
    "hands.detected_share",
    "hands.pck_0.2",
    "hands.seam",
    "hands.fidelity",
    "body.detected_share",
    "body.pck_0.2",
)


def vae_frames(manifest: str, vae_folder: str, generated: str, out: str) -> None:
    """Each real row that `generated` holds, cut to the window its sidecar records (the generated
    image's part of the frame, at its size) and passed through the VAE (posterior mode and back), saved
    as ``<image_id>.png`` in `out` with a sidecar naming the same window. At 128 px a hand is one or two
    latent pixels wide, so this row says how much of a miss the VAE alone explains."""
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    from generation.evaluate.framing import frame_map
    from generation.training.vae import from_uint8, reconstruct, to_uint8
    from manifests.decode import image_array
    from manifests.reader import open_manifest
    from manifests.transforms import FitTransform

    vae = AutoencoderKL.from_pretrained(os.path.join(vae_folder, "vae")).eval()
    table = open_manifest(manifest).read(
        "images", ["image_id", "image", "width", "height", "image_height", "image_width"], status="ok"
    )
    os.makedirs(out, exist_ok=True)
    for row in table.to_pylist():
        path = os.path.join(generated, f"{row['image_id']}.png")
        if not os.path.isfile(path):
            continue
        with Image.open(path) as im:
            size = im.size
        frame = (row["width"], row["height"])
        fmap = frame_map(generated, row["image_id"], frame, size)  # the sidecar's window, else whole
        # A whole frame's two axis scales differ only by rounding of its size; a window's are equal.
        t = FitTransform(fmap.scale[0], *fmap.offset, *frame, *size)
        real = t.warp(image_array(row))
        with torch.no_grad():
            Image.fromarray(to_uint8(reconstruct(vae, from_uint8([real])))[0]).save(
                os.path.join(out, f"{row['image_id']}.png")
            )
        with open(os.path.join(out, f"{row['image_id']}.json"), "w", encoding="utf-8") as f:
            json.dump({"source": {"window": {"scale": list(fmap.scale), "offset": list(fmap.offset)}}}, f)


# The comparison draws each row on the canvas stage 2 and the baseline were trained on: the square
# around the hands that train-body cuts (``--framing hands``). Drawn whole, with the frame's overflow
# around the square, both painted texture (bodies found in 1 of 16 rows, against 8 of 16 for the real
# frames through the VAE).
FRAMING = "hands"


def generate_args(manifest: str, rows: int, steps: int) -> list[str]:
    """The `handfirst-gen` arguments every generated row of the comparison shares: the first `rows`
    training rows, one seed, the chain's steps and guidance."""
    return [
        *("--from-manifest", manifest, "--split", "all", "--limit", str(rows)),
        *("--steps", str(steps), "--guidance-scale", str(GUIDANCE), "--seed", "0"),
        *("--log-level", "WARNING"),
    ]


def evaluate(manifest: str, work: str, rows: int, name: str) -> None:
    """`handfirst-gen evaluate` of comparison row `name` (``real``: the manifest's photos) into
    ``WORK/eval/NAME``."""
    generated = "real" if name == "real" else os.path.join(work, "generated", name)
    cli(
        *("evaluate", "--manifest", manifest, "--generated", generated),
        *("--out", os.path.join(work, "eval", name), "--split", "all", "--limit", str(rows)),
        *("--label", name, "--no-progress", "--log-level", "WARNING"),
    )


def generate_two_stage(manifest: str, runs: dict, work: str, rows: int, steps: int) -> list[str]:
    """The two stages under each blend (``handfirst-gen generate``) on the first `rows` training rows,
    the real frames through the VAE at the generated window (`vae_frames`), each evaluated with the real
    photos: the comparison rows it wrote."""
    generated = os.path.join(work, "generated")
    for blend in BLENDS:
        cli(
            *("generate", "--hand-model", runs["hand"], "--body-model", runs["body"], "--blend", blend),
            *("--min-hand-size", "6", "--framing", FRAMING, *generate_args(manifest, rows, steps)),
            *("--out", os.path.join(generated, blend)),
        )
    vae_frames(
        manifest, runs["vae"], os.path.join(generated, "sequential"), os.path.join(generated, "real_vae")
    )
    for name in TWO_STAGE_ROWS:
        evaluate(manifest, work, rows, name)
    return list(TWO_STAGE_ROWS)


def generate_baseline(manifest: str, runs: dict, work: str, rows: int, steps: int) -> list[str]:
    """The one-stage baseline (``handfirst-gen baseline --method controlnet-openpose`` with the baseline
    run) on the rows `generate_two_stage` draws, at the baseline's training size and fit, evaluated."""
    with open(os.path.join(runs["baseline"], "config.json"), encoding="utf-8") as f:
        trained = json.load(f)
    side, fit = int(trained["data"]["resolution"]), trained["config"]["fit"]
    cli(
        *("baseline", "--method", "controlnet-openpose", "--pretrained", runs["baseline"]),
        *("--controlnet", os.path.join(runs["baseline"], "controlnet"), "--fit", fit, "--size", str(side)),
        *("--framing", FRAMING, "--no-progress", *generate_args(manifest, rows, steps)),
        *("--out", os.path.join(work, "generated", "baseline")),
    )
    evaluate(manifest, work, rows, "baseline")
    return ["baseline"]


def two_stage(work: str, rows: int) -> dict:
    """The paper's comparison from the evaluated rows (`generate_two_stage`, `generate_baseline`): one
    ``--compare`` table with the real photos, and ``{row: {column: value}}`` for `COMPARISON_COLUMNS`."""
    cli(
        "evaluate",
        "--compare",
        *[os.path.join(work, "eval", n) for n in COMPARISON],
        "--out",
        os.path.join(work, "eval", "compare"),
        "--title",
        f"mini chain, {rows} hagrid_mini training rows: the one-stage baseline against two stages",
    )
    table = {}
    for name in COMPARISON:
        with open(os.path.join(work, "eval", name, "report.json"), encoding="utf-8") as f:
            report = json.load(f)
        table[name] = {
            c: report.get(c.split(".", 1)[0], {}).get(c.split(".", 1)[1]) for c in COMPARISON_COLUMNS
        }
        table[name]["images"] = report["images"]["evaluated"]
        table[name]["hands"] = report["hands"].get("count")
    return table


# ---------------------------------------------------------------------------------------------------
# Picture


def picture(path: str, runs: dict, vae_pics: tuple, s1: dict, work: str, rows: list[str], pics: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from generation.training.metrics import read_metrics
    from manifests.draw import draw_hand

    fig = plt.figure(figsize=(12, 8.2), dpi=72)
    grid = fig.add_gridspec(3, 3, height_ratios=[1.0, 0.8, 1.6])
    curves = [
        ("vae", "mse", "train-vae: pixel MSE"),
        ("hand", "noise_loss", "stage 1: denoising MSE / mask BCE"),
        ("body", "mse", "stage 2: noise MSE"),
    ]
    for k, (name, key, title) in enumerate(curves):
        ax = fig.add_subplot(grid[0, k])
        recs = [r for r in read_metrics(runs[name]) if key in r]
        ax.plot([r["step"] for r in recs], [r[key] for r in recs], label=key)
        if name == "hand":
            ax.plot([r["step"] for r in recs], [r["mask_loss"] for r in recs], label="mask_loss")
            ax.legend(fontsize=8)
        if name == "body" and os.path.isdir(runs["baseline"]):
            base = [r for r in read_metrics(runs["baseline"]) if key in r]
            ax.plot([r["step"] for r in base], [r[key] for r in base], label="one-stage baseline", alpha=0.7)
            ax.legend(fontsize=8)
        if name == "vae":
            val = [r for r in read_metrics(runs[name]) if "val_psnr" in r]
            ax2 = ax.twinx()
            ax2.plot([r["step"] for r in val], [r["val_psnr"] for r in val], "o-", color="C1")
            ax2.set_ylabel("PSNR dB", color="C1")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)

    def strip(ax, tiles, title):
        ax.imshow(np.concatenate(tiles, axis=1))
        ax.set_title(title, fontsize=10)
        ax.axis("off")

    originals, recs = vae_pics
    ax = fig.add_subplot(grid[1, :])
    strip(
        ax,
        [np.concatenate([o, r], axis=0) for o, r in zip(originals, recs)],
        "VAE: held-in hand crops (top) and reconstructions (bottom), 64 px",
    )
    tiles = []
    for case, img, mask in zip(s1["cases"], s1["images"], s1["masks"]):
        drawn = draw_hand(img.copy(), case["keypoints"])

        def gray(a):
            return np.repeat((np.asarray(a, bool)[..., None] * 255).astype(np.uint8), 3, axis=2)

        tiles.append(np.concatenate([case["crop"], img, drawn, gray(mask), gray(case["mask"])], axis=0))
    ax = fig.add_subplot(grid[2, :])
    strip(
        ax,
        tiles,
        "stage 1, training poses, seed 0: real crop / sample / sample + conditioning skeleton / predicted mask / manifest mask",
    )
    fig.tight_layout()
    fig.canvas.draw()
    top = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    plt.close(fig)
    parts = [top, stage2_sheet(pics), comparison_sheet(work, rows)]
    parts = [p for p in parts if p is not None]
    width = max(p.shape[1] for p in parts)
    parts = [
        np.pad(
            p,
            ((0, 0), ((width - p.shape[1]) // 2, (width - p.shape[1] + 1) // 2), (0, 0)),
            constant_values=255,
        )
        for p in parts
    ]
    # A 256-colour palette keeps the committed picture small (about a third of the RGB file).
    Image.fromarray(np.concatenate(parts, axis=0)).quantize(256).save(path, optimize=True)


TILE = 160  # px: the comparison frames are drawn at least this high, so the hands can be seen


def labelled(image: np.ndarray, title: str) -> np.ndarray:
    """`image` under a 24 px white band with `title` in it."""
    import cv2

    header = np.full((24, image.shape[1], 3), 255, np.uint8)
    cv2.putText(header, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, image])


def stage2_sheet(pics: str) -> np.ndarray | None:
    """Stage 2 alone at its training framing (`score_stage2`'s first rows): the real rows above, the
    drawings below, at their own size. None when that phase saved no pictures."""
    path = pics + "_stage2.npz"
    if not os.path.isfile(path):
        return None
    saved = np.load(path)
    gap = np.full((saved["real"].shape[1], 4, 3), 255, np.uint8)
    lines = [
        np.concatenate([t for tile in saved[k] for t in (tile, gap)][:-1], axis=1) for k in ("real", "drawn")
    ]
    band = np.full((4, lines[0].shape[1], 3), 255, np.uint8)
    return labelled(
        np.concatenate([lines[0], band, lines[1]]),
        "stage 2 alone at its training framing, training rows, seed 0: real row (top) / drawn (bottom)",
    )


def comparison_sheet(work: str, rows: list[str]) -> np.ndarray | None:
    """The comparison's images for `rows`, whole, one line each: the target pose drawn on the sequential
    output, the real frame through the VAE, the one-stage baseline, then the two stages under none /
    fixed / sequential, each `TILE` px high, under a header. None when nothing was generated."""
    import cv2
    from PIL import Image

    from manifests.draw import draw_hand, draw_openpose
    from manifests.pose import to_openpose18

    shown = ("real_vae", "baseline", *BLENDS)
    columns = (
        "target pose",
        "real, through the VAE",
        "one-stage baseline",
        *(f"two stages, {b}" for b in BLENDS),
    )
    lines = []
    for image_id in rows:
        frames = {}
        for name in shown:
            path = os.path.join(work, "generated", name, f"{image_id}.png")
            if os.path.isfile(path):
                with Image.open(path) as im:
                    scale = TILE / im.height
                    frames[name] = np.asarray(
                        im.convert("RGB").resize((round(im.width * scale), TILE), Image.BICUBIC)
                    )
        if "sequential" not in frames:
            continue
        with open(os.path.join(work, "generated", "sequential", f"{image_id}.json"), encoding="utf-8") as f:
            spec = json.load(f)["spec"]
        scale = TILE / spec["height"]
        target = frames["sequential"].copy()
        if spec["body"] is not None:
            body = np.asarray(spec["body"]["keypoints"], np.float64)
            body[:, :2] *= scale
            target = draw_openpose(
                target, to_openpose18(body, spec["body"]["format"]), stickwidth=2, radius=2
            )
        for hand in spec["hands"]:
            kp = np.asarray(hand["keypoints"], np.float64)
            kp[:, :2] *= scale
            target = draw_hand(target, kp)
        blank = np.zeros_like(frames["sequential"])
        lines.append([target] + [frames.get(n, blank) for n in shown])
    if not lines:
        return None
    # Images keep their aspect, each centred in a cell as wide as the widest.
    tile_w = max(t.shape[1] for line in lines for t in line) + 4
    body = np.full((len(lines) * (TILE + 4), len(columns) * tile_w, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        for k, tile in enumerate(line):
            x = k * tile_w + (tile_w - 4 - tile.shape[1]) // 2
            body[i * (TILE + 4) : i * (TILE + 4) + TILE, x : x + tile.shape[1]] = tile
    names = np.full((20, body.shape[1], 3), 255, np.uint8)
    for k, name in enumerate(columns):
        cv2.putText(
            names, name, (k * tile_w + 4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA
        )
    return labelled(
        np.concatenate([names, body]),
        f"{len(lines)} training rows, seed 0, each image whole: the training square around the hands",
    )


# ---------------------------------------------------------------------------------------------------


def met(value, target) -> bool | None:
    return None if value is None else bool(value >= target)


PHASES = (
    "prep",
    "train_vae",
    "score_vae",
    "train_hand",
    "score_stage1",
    "train_body",
    "score_stage2",
    "train_baseline",
    "generate_two_stage",
    "generate_baseline",
    "two_stage",
)


def save_pictures(path: str, **arrays) -> None:
    np.savez_compressed(path, **{k: np.stack(v) for k, v in arrays.items()})


def targets(done: dict, seconds: dict, cpu_seconds: dict, chain_wall: float) -> dict:
    """Each target: True / False, or None where its phase did not run (or nothing was detected)."""
    vae = done.get("score_vae", {})
    s1 = done.get("score_stage1", {})
    train = s1.get("training_poses", {})
    control = s1.get("pose_control", {})
    s2 = done.get("score_stage2", {})
    rows2 = s2.get("training_rows", {})
    control2 = s2.get("pose_control", {})
    return {
        "vae_psnr_db >= 22": met(vae.get("psnr_db_held_in_crops"), TARGETS["vae_psnr_db"]),
        "stage1 detection >= 0.7 x real": met(
            train.get("detection_ratio_vs_real"), TARGETS["stage1_detection_ratio"]
        ),
        "stage1 pck_0.2 >= 0.5": met(train.get("pck_0.2"), TARGETS["stage1_pck_0.2"]),
        "stage1 mask_iou >= 0.5": met(train.get("mask_iou"), TARGETS["stage1_mask_iou"]),
        "pose control: pck own > other": None
        if control.get("pck_own") is None
        else bool(control["pck_own"] > control["pck_other"]),
        "stage2 body detected >= 0.5": met(
            rows2.get("body_detected_share"), TARGETS["stage2_body_detected_share"]
        ),
        "stage2 body pck_0.2 >= 0.5": met(rows2.get("body_pck_0.2"), TARGETS["stage2_body_pck_0.2"]),
        "stage2 pose control: pck own > other": None
        if control2.get("pck_own") is None
        else bool(control2["pck_own"] > control2["pck_other"]),
        "chain <= 90 min": None if "two_stage" not in done else chain_wall <= 5400,
        "stage 2 <= 40 min of one core": None
        if "train_body" not in done
        else cpu_seconds["train_body"] <= 2400,
        **paper_predictions(done),
    }


def paper_predictions(done: dict) -> dict:
    """What the paper predicts for the comparison, each True / False, or None without the figures:
    fixed and sequential find the hand in its crop box at least 0.8x as often as stage 1's own samples
    and more often than the baseline and `none`; sequential has a lower seam than fixed."""
    table = done.get("two_stage") or {}
    if not table:
        return {}
    crop = {n: table[n]["hands.crop_detected_share"] for n in COMPARISON}
    stage1_share = done.get("score_stage1", {}).get("training_poses", {}).get("detected_share")
    out = {}
    for blend in ("fixed", "sequential"):
        mine = crop[blend] or 0.0
        out[f"paper: {blend} crop detection >= 0.8 x stage 1's samples"] = (
            None if stage1_share is None else bool(mine >= 0.8 * stage1_share)
        )
        out[f"paper: {blend} crop detection > baseline and none"] = bool(
            mine > max(crop["baseline"] or 0.0, crop["none"] or 0.0)
        )
    seams = table["sequential"]["hands.seam"], table["fixed"]["hands.seam"]
    out["paper: sequential seam < fixed seam"] = None if None in seams else bool(seams[0] < seams[1])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=None, help="working folder, emptied first (default: out/learns, kept)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep --work: skip the phases a cut-off invocation finished, continue its training runs",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="a few steps per phase, to check the plumbing")
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads of the VAE, and the cores the later phases share, one thread each "
        "(default: every core this process may use; on a loaded machine two threads ran stage 1 up to "
        "10x slower)",
    )
    p.add_argument("--note", action="append", default=[], help="a line recorded in the result (repeatable)")
    p.add_argument(
        "--redo",
        action="append",
        default=[],
        choices=PHASES,
        help="with --resume: run this finished phase again, its time replaced (repeatable)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("distributed", "generation", "prep", "manifests", "accelerate", "diffusers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    suffix = "_quick" if args.quick else ""
    result_path = os.path.join(RESULTS, f"learns{suffix}.json")

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # accelerate would pick a GPU by itself
    import torch

    from bench._common import machine

    no_cuda = (
        "no CUDA device was available to this session; rerun bench/learns.py --device cuda on a CUDA machine"
    )

    if args.device == "cuda" and not torch.cuda.is_available():
        previous = {}
        if os.path.isfile(result_path):
            with open(result_path, encoding="utf-8") as f:
                previous = json.load(f)
        previous["cuda"] = {"run": False, "why": no_cuda}
        os.makedirs(RESULTS, exist_ok=True)
        with open(result_path, "w", encoding="utf-8") as f:
            json.dump(previous, f, indent=2)
        print(f"no CUDA device: the CUDA run is recorded as not run in {result_path}")
        return 0
    torch.set_num_threads(args.threads)
    chain = CHAIN["quick" if args.quick else args.device]
    # out/learns (git-ignored) keeps the runs: the generation walkthrough notebook uses them.
    work = args.work or os.path.join(ROOT, "out", f"learns{suffix}")
    phases, load_before = open_work(work, args.resume)
    phases.state.setdefault("notes", []).extend(args.note)
    for name in args.redo:
        for folder in REDO_CLEARS.get(name, ()):  # generate skips the images already written
            shutil.rmtree(os.path.join(work, folder), ignore_errors=True)
        phases.state["done"].pop(name, None)
        for key in ("seconds", "cpu_seconds"):
            phases.state[key].pop(name, None)
    # The machine's load when the first invocation started; each phase records the load at its end.
    load_before = phases.state.setdefault("load_before", load_before)
    phases.save()

    import prep
    from generation.training.body_config import BodyTrainConfig
    from generation.training.hand import HandTrainConfig
    from generation.training.vae import VaeTask, reconstruct, reconstruction_psnr, to_uint8, train_vae
    from generation.training.vae_config import VaeTrainConfig

    manifest = os.path.join(work, "manifest")
    runs = {name: os.path.join(work, name) for name in ("vae", "hand", "body", "baseline")}
    pics = os.path.join(work, "pictures")
    # Checkpoints every few hundred steps with resume "latest": a cut-off run continues where it stopped.
    common = {"manifest": manifest, "preset": "mini", "pretrained": runs["vae"], "resume": "latest", **COMMON}

    def write_result() -> dict:
        phases.save()
        done, seconds = phases.state["done"], phases.seconds
        cpu_seconds = {k: round(v, 1) for k, v in phases.state["cpu_seconds"].items()}
        # Phases overlap from train_hand on, so the chain's time is the wall clock of the invocations
        # (prep, which makes the data, is not part of it).
        chain_wall = phases.state["wall_s"] - seconds.get("prep", 0.0)
        result = {
            "benchmark": "learns",
            "what": "mini preset from scratch on hagrid_mini: train-vae, stage 1, stage 2; scored against the issue's targets",
            "device": args.device,
            "quick": args.quick,
            "phases_run": [k for k in PHASES if k in done],
            "phases_not_run": [k for k in PHASES if k not in done],
            "invocations": phases.state["invocations"],
            "notes": phases.state.setdefault("notes", []),
            "machine": {**machine(load_before), "load_at_phase_end": phases.state.get("load_at_end", {})},
            "settings": {
                **chain,
                "body_training": BODY_TRAINING,
                "baseline": {**chain["body"], **BASELINE},
                "threads": args.threads,
            },
            "phases_s": seconds,
            "phases_cpu_s": cpu_seconds,
            "chain_wall_s": round(chain_wall, 1),
            "data": done.get("prep"),
            "vae": done.get("score_vae"),
            "stage1": done.get("score_stage1"),
            "stage2": done.get("score_stage2"),
            "comparison": done.get("two_stage"),
            "targets": targets(done, seconds, cpu_seconds, chain_wall),
            "cuda": {"run": False, "why": no_cuda} if args.device == "cpu" else {"run": True},
        }
        os.makedirs(RESULTS, exist_ok=True)
        with open(result_path, "w", encoding="utf-8") as f:
            json.dump(portable(result), f, indent=2, default=float)
        return result

    def run_prep() -> dict:
        if os.path.exists(manifest):
            shutil.rmtree(manifest)  # a cut-off prep: start it again
        summary = prep.run(
            input=os.path.join(DATA, "hagrid_mini"),
            out=manifest,
            label_from_dir=True,
            shard_size=10,
            workers=2,
            progress=False,
        )
        return {"images": summary["images"]}

    phases.run("prep", run_prep)
    write_result()
    vae_cfg = VaeTrainConfig(
        out=runs["vae"],
        validate_every=250,
        checkpoint_every=250,
        **{**common, "pretrained": None, **chain["vae"]},
    )
    phases.run("train_vae", lambda: dataclasses.asdict(train_vae(vae_cfg)))

    def score_vae() -> dict:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(os.path.join(runs["vae"], "vae")).eval()
        task = VaeTask(VaeTrainConfig(manifest=manifest, preset="mini", image_resolution=0))
        task.check_data()
        crops = torch.stack(task.crops)
        save_pictures(
            pics + "_vae.npz",
            originals=list(to_uint8(crops[:8])),
            recs=list(to_uint8(reconstruct(vae, crops[:8]))),
        )
        return {
            "psnr_db_held_in_crops": round(reconstruction_psnr(vae, crops), 2),
            "crops": len(task.crops),
            "scaling_factor": vae.config.scaling_factor,
            "parameters": sum(q.numel() for q in vae.parameters()),
        }

    phases.run("score_vae", score_vae)
    write_result()

    # From here the trainings, scorings and generations run in spawned processes, as many at once as
    # the cores hold (one thread each): stage 1 beside stage 2, then the baseline in stage 1's place
    # while the other core scores and generates. Stage 1 is the shortest training, so it goes first:
    # three one-thread trainings at once took 1.3x the CPU per step (with Dask's allocator setting
    # leaked into them), and 103 minutes for the chain; in this order it took 89.
    body_common = {**BODY_TRAINING, **common, **chain["body"]}
    hand_cfg = HandTrainConfig(
        out=runs["hand"],
        cache_latents=True,
        validate_every=600,
        checkpoint_every=300,
        **common,
        **chain["hand"],
    )
    steps, rows = chain["sample_steps"], chain["generate_rows"]
    phases.run_graph(
        {
            "train_hand": (train_hand_phase, (hand_cfg,), (), 1),
            "train_body": (train_body_phase, (BodyTrainConfig(out=runs["body"], **body_common),), (), 1),
            "train_baseline": (
                train_body_phase,
                (BodyTrainConfig(out=runs["baseline"], **body_common, **BASELINE),),
                (),
                1,
            ),
            "score_stage1": (
                score_stage1_phase,
                (runs["hand"], manifest, chain["vae"]["resolution"], steps, pics + "_stage1.npz"),
                ("train_hand",),
                1,
            ),
            "score_stage2": (
                score_stage2_phase,
                (runs["body"], manifest, steps, pics + "_stage2.npz"),
                ("train_body",),
                1,
            ),
            "generate_two_stage": (
                generate_two_stage,
                (manifest, runs, work, rows, steps),
                ("train_hand", "train_body"),
                1,
            ),
            # The baseline trains last, so its generation has both cores to itself.
            "generate_baseline": (
                generate_baseline,
                (manifest, runs, work, rows, steps),
                ("train_baseline",),
                2,
            ),
        },
        cores=args.threads,
        on_done=lambda _: write_result(),
    )
    phases.run("two_stage", two_stage, work, rows)
    result = write_result()

    from manifests.reader import open_manifest

    first_rows = (
        open_manifest(manifest).read("images", ["image_id"], status="ok").column("image_id").to_pylist()[:4]
    )
    png = os.path.join(RESULTS, f"learns{suffix}.png")
    vae_pics = np.load(pics + "_vae.npz")
    s1_pics = np.load(pics + "_stage1.npz")
    cases = [
        {"crop": c, "keypoints": k, "mask": m}
        for c, k, m in zip(s1_pics["crops"], s1_pics["keypoints"], s1_pics["manifest_masks"])
    ]
    picture(
        png,
        runs,
        (list(vae_pics["originals"]), list(vae_pics["recs"])),
        {"cases": cases, "images": list(s1_pics["images"]), "masks": list(s1_pics["masks"])},
        work,
        first_rows,
        pics,
    )
    shutil.copy(
        os.path.join(work, "eval", "compare", "compare.md"),
        os.path.join(RESULTS, f"learns{suffix}_compare.md"),
    )
    for k, v in result["targets"].items():
        print(f"  [{'ok' if v else 'MISS' if v is not None else 'n/a'}] {k}")
    print(f"wrote {result_path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
