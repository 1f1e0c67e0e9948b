"""All settings of a prep run, as one plain dataclass. The CLI's options map 1:1 onto these fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class PrepConfig:
    # Input and output
    input: str = "../shared/data/hagrid_mini"
    out: str = "out/manifest"
    format: str = "folder"  # folder | hagrid | coco | interhand
    label_from_dir: bool = False
    split: str | None = None  # force a split name; HaGRID derives it from user_id
    limit: int | None = None
    # Work partitioning
    shard_size: int = 64
    workers: int = 2
    scheduler: str | None = None  # tcp://host:8786 to use an existing Dask cluster
    gpu_resource: bool = False  # SAM tasks ask for a `GPU` worker resource
    # Image decoding
    max_pixels: int = 40_000_000  # decompression-bomb bound, in pixels
    max_image_side: int = 768  # the stored `image` column is resized to this longest side
    # Hand keypoints
    keypoint_source: str = "detect"  # detect | annotation (use the dataset's keypoints when present)
    min_detection_confidence: float = 0.5
    min_hand_score: float = 0.5
    max_hands: int = 4
    wrist_refine: bool = True  # second pass on upscaled crops around the body pose's wrists
    wrist_crop_scale: float = 0.35  # crop side around a wrist, as a fraction of the image's longer side
    # Body pose
    min_pose_confidence: float = 0.5
    # Masks
    mask_method: str = "auto"  # auto | sam | grabcut
    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_b"
    device: str = "cpu"
    # Crops and heatmaps
    crop_size: int = 512
    crop_margin: float = 0.25
    heatmap_size: int | None = None  # default crop_size // 8, the latent size
    sigma: float = 1.5  # in heatmap pixels
    # Captions
    caption_templates: dict = field(default_factory=dict)  # label -> template override

    def resolved_heatmap_size(self) -> int:
        return self.heatmap_size or max(1, self.crop_size // 8)

    def to_dict(self) -> dict:
        return asdict(self)
