"""Checks every generation entry point shares: seeds, what one image may cost, and finite outputs.

- `check_seed` / `make_generator`: torch generators take seeds in [0, 2**64); anything else is a
  clear `ValueError` naming that range instead of an ``OverflowError`` deep inside torch.
- `check_image_cost`: a request is refused *before* anything is allocated when one image's canvas
  exceeds `max_pixels`, or its canvas times its denoising steps exceeds `max_pixel_steps`. Both are
  settings (`GenerateConfig`, ``sample-hand`` / ``sample-body`` options, pipeline arguments), so a
  large machine can raise them; the defaults let SD 1.5 draw up to 2048 x 2048 with 100 steps.
- `check_hand_count`: an image asks for at most `max_hands` hands (a setting), checked with the cost,
  since stage 1's memory follows the hands it batches.
- `check_finite`: a model with NaN weights (or a float16 overflow) denoises to NaN latents, which
  decode to black images; the pipelines call this on the final latents and the decoded pixels and
  stop with a `NonFiniteOutputError` that says which model and what to do.

Torch is imported inside the functions only, so settings classes can import the defaults cheaply.
"""

from __future__ import annotations

import math
import numbers

SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes [0, 2**64) (negatives wrap around silently)
MAX_SEED = SEED_LIMIT - 1  # the largest seed a setting accepts
DEFAULT_MAX_PIXELS = 2048 * 2048
DEFAULT_MAX_PIXEL_STEPS = 100 * DEFAULT_MAX_PIXELS
DEFAULT_MAX_HANDS = 64  # hands per image; stage 1 draws them `DEFAULT_HAND_BATCH` at a time
DEFAULT_HAND_BATCH = 8


class CostLimitError(ValueError):
    """One image would cost more than `max_pixels` / `max_pixel_steps` allow."""


class NonFiniteOutputError(ValueError):
    """A model produced NaN or inf values; nothing derived from them is written."""


def check_seed(seed, what: str = "seed") -> int:
    """`seed` as an int in [0, 2**64); a `ValueError` naming the range otherwise."""
    whole = isinstance(seed, numbers.Integral) or (
        isinstance(seed, numbers.Real) and float(seed).is_integer()
    )
    if isinstance(seed, bool) or not whole:
        raise ValueError(f"{what} must be an integer in [0, 2**64), got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{what} must be in [0, 2**64) (0 to {SEED_LIMIT - 1}), got {seed}")
    return seed


def offset_seed(seed: int, offset: int) -> int:
    """A second seed derived from `seed` (e.g. stage 2's ``seed + 1``), wrapped into [0, 2**64) so
    the largest valid seed still gives a valid one; smaller seeds are unchanged by the wrap."""
    return (check_seed(seed) + offset) % SEED_LIMIT


def make_generator(seed, device="cpu", what: str = "seed"):
    """A ``torch.Generator`` on `device` seeded with the checked `seed`."""
    import torch

    return torch.Generator(device=device).manual_seed(check_seed(seed, what))


def _side(n: int) -> str:
    root = math.isqrt(n)
    return f" ({root}x{root})" if root * root == n else ""


def check_image_cost(
    width: int,
    height: int,
    steps: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_pixel_steps: int = DEFAULT_MAX_PIXEL_STEPS,
    what: str = "image",
    extra_pixel_steps: int = 0,
) -> None:
    """Refuse one image whose canvas (`width` x `height`) is over `max_pixels`, or whose canvas x
    `steps` (plus `extra_pixel_steps`, e.g. the stage-1 hand crops of the same image) is over
    `max_pixel_steps`. Raises `CostLimitError` naming the bound, before anything is allocated."""
    for name, bound in (("max_pixels", max_pixels), ("max_pixel_steps", max_pixel_steps)):
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {bound!r}")
    pixels = int(width) * int(height)
    if pixels > max_pixels:
        raise CostLimitError(
            f"{what} {width}x{height} is {pixels:,} pixels, over max_pixels {max_pixels:,}{_side(max_pixels)}; "
            "ask for a smaller size or raise max_pixels"
        )
    cost = pixels * int(steps) + int(extra_pixel_steps)
    if cost > max_pixel_steps:
        detail = f"{width}x{height} x {steps} steps" + (
            f" + {extra_pixel_steps:,} for its hands" if extra_pixel_steps else ""
        )
        raise CostLimitError(
            f"{what} {detail} is {cost:,} pixel-steps, over max_pixel_steps {max_pixel_steps:,}; "
            "use fewer steps, a smaller size, or raise max_pixel_steps"
        )


def check_hand_count(hands: int, max_hands: int = DEFAULT_MAX_HANDS, what: str = "image") -> None:
    """Refuse an image with more than `max_hands` hands (`CostLimitError`), before anything is drawn."""
    if isinstance(max_hands, bool) or not isinstance(max_hands, int) or max_hands < 1:
        raise ValueError(f"max_hands must be an integer >= 1, got {max_hands!r}")
    if hands > max_hands:
        raise CostLimitError(f"{what} asks for {hands:,} hands, over max_hands {max_hands}; raise max_hands")


def _nonfinite_weights(module) -> list[str]:
    import torch

    return [name for name, p in module.named_parameters() if not torch.isfinite(p).all()]


def check_finite(tensor, what: str, model=None, model_name: str = "model") -> None:
    """Raise `NonFiniteOutputError` if `tensor` holds NaN or inf. With `model`, the message says
    whether its weights are at fault (a damaged or diverged model) or not (precision overflow)."""
    import torch

    if bool(torch.isfinite(tensor).all()):
        return
    share = float((~torch.isfinite(tensor)).float().mean())
    cause = ""
    if model is not None:
        bad = _nonfinite_weights(model)
        if bad:
            cause = (
                f"; the {model_name} has NaN/inf weights in {len(bad)} tensor(s) (e.g. {bad[0]}): the model "
                "folder is damaged or its training diverged"
            )
        else:
            cause = f"; the {model_name}'s weights are finite, so the values overflowed: try float32"
    raise NonFiniteOutputError(
        f"{what} hold NaN/inf values ({share:.0%} of them), which would give blank images{cause}; "
        "no image was made from them"
    )
