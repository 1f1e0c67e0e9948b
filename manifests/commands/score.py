"""`handfirst-manifests score`: a manifest's hand keypoints against COCO-style ground truth."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..dispatch import fail
from ..matching import MatchConfig
from ..settings import SettingError, Settings, from_args, setting
from ..settings import add_arguments as add_settings

HELP = (
    "score the manifest's hand keypoints against COCO-style ground truth (recall, precision, PCK, mean error)"
)


@dataclass
class ScoreConfig(Settings):
    truth: str | None = setting(
        None, "COCO-style keypoints JSON (21 hand keypoints, MediaPipe order); required"
    )
    json: bool = setting(False, "print the result as JSON instead of text")
    gate: float = setting(MatchConfig.gate, "max mean keypoint distance of a match, in truth box sizes", gt=0)

    def validate(self) -> ScoreConfig:
        super().validate()
        if not self.truth:
            raise SettingError("truth (--truth) is required: the keypoints JSON to score against")
        return self


def add_arguments(parser) -> None:
    parser.add_argument("manifest", help="manifest root (local path or fsspec URL)")
    add_settings(parser, ScoreConfig, title="score settings")


def run(args) -> int:
    from ..score import TruthError, format_score, score_manifest

    settings = from_args(ScoreConfig, args).validate()
    try:
        result = score_manifest(args.manifest, settings.truth, MatchConfig(gate=settings.gate))
    except TruthError as exc:
        return fail(args.program, exc)
    print(json.dumps(result, indent=2) if settings.json else format_score(result))
    return 0
