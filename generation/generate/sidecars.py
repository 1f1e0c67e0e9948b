"""Replay: reading a sidecar back into the request, settings and models that made its image."""

from __future__ import annotations

from ..pipelines.blend_config import LATENT_PIXEL_SETTINGS
from ..spec import SpecError, parse_spec, read_json_file
from .requests import Request, RequestError
from .settings import GenerateConfig

# Blending settings in latent pixels in a sidecar that records `expand_pixels` (other units today).
BLEND_UNIT_SETTINGS = ("d0", "min_core", *LATENT_PIXEL_SETTINGS)


def request_from_sidecar(path: str) -> tuple[Request, GenerateConfig, dict]:
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
        settings = GenerateConfig.from_dict(current_blend_units(path, data["settings"]))
        return (
            Request(spec, data.get("source") or {}, data.get("hand_prompts")),
            settings,
            _models(data["models"]),
        )
    except RequestError:
        raise
    except SpecError as exc:
        raise RequestError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise RequestError(f"{path}: not a generate sidecar ({type(exc).__name__}: {exc})") from None


def _models(models) -> dict:
    """A sidecar's model record: an object whose `hand` and `body` objects name a `path`."""
    if not isinstance(models, dict):
        raise TypeError(f"models: a JSON object, got {type(models).__name__}")
    for part in ("hand", "body"):
        entry = models.get(part)
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise TypeError(f"models.{part}: an object with a path string, got {entry!r:.80}")
    return models


def current_blend_units(path: str, settings: dict) -> dict:
    """A sidecar's settings in today's blending units. A sidecar made with latent-pixel keep-masks
    (it records ``expand_pixels``) replays only without blending (``blend`` none, where the keep-masks
    play no part: its old blending settings are dropped); with blending it is refused in one line that
    names the setting whose unit changed."""
    if not any(name in settings for name in LATENT_PIXEL_SETTINGS):
        return settings
    if settings.get("blend") != "none":
        raise RequestError(
            f"{path}: made with keep-masks in latent pixels (expand_pixels={settings['expand_pixels']}, "
            f"d0={settings.get('d0')}, min_core={settings.get('min_core')}); blending now works in image "
            f"pixels (band, d0: shares of each hand's size; min_core: share of what the whole mask keeps), so "
            f"blend={settings.get('blend')} cannot be replayed exactly (docs/fidelity.md)"
        )
    return {k: v for k, v in settings.items() if k not in BLEND_UNIT_SETTINGS}


def settings_base(config: str | None = None, replay: list[str] | None = None) -> dict | None:
    """The settings that options given by the caller override: a ``--config`` JSON file's (a sidecar
    works too, through its ``settings``), else the first replayed sidecar's with the crop margin its
    model record used, else None (the defaults)."""
    if config:
        from manifests.settings import read_settings_file

        return read_settings_file(config)
    if replay:
        _, first, models = request_from_sidecar(replay[0])
        base = first.to_dict()
        base["crop_margin"] = models.get("crop_margin", base.get("crop_margin"))
        return base
    return None
