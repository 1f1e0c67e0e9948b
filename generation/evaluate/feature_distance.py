"""Feature distances for image quality: FID and KID between generated and real images (torchmetrics' maths).

The feature extractor runs once per image; its features feed torchmetrics' `FrechetInceptionDistance`
and `KernelInceptionDistance` through a pass-through module, so both metrics share one forward pass
and the maths can be tested with any small extractor.

Inception: the standard FID network is torch-fidelity's `FeatureExtractorInceptionV3` (the
TensorFlow 2015-12-05 Inception converted to PyTorch, the one torchmetrics and pytorch-fid use),
2048-d pool features. Its weights come from a local file given by the user, e.g.
``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity's release asset) or pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``; nothing is downloaded. Images are resized to
`image_size` x `image_size` (299) with PIL bicubic before batching (aspect ratio not kept, as in
clean-fid); torch-fidelity then applies its TF-compatible resize, a no-op at 299.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

logger = logging.getLogger(__name__)

INCEPTION_SIZE = 299


class PassThrough(nn.Module):
    """Feature 'extractor' for torchmetrics that returns its (N, D) input as float64 features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64)


def load_inception(path: str, device: str = "cpu") -> nn.Module:
    """torch-fidelity's FID InceptionV3 (2048-d features) with weights from the local file `path`.

    The file is read with ``torch.load(weights_only=True)`` first, so only a plain state dict of
    tensors is accepted (torch-fidelity itself loads it again, without that restriction).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:  # not a (weights-only) torch file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "empty or truncated file"
        raise ValueError(
            f"{path}: cannot read as FID InceptionV3 weights ({type(exc).__name__}: {first})"
        ) from exc
    if not isinstance(state, dict) or "Mixed_7c.branch1x1.conv.weight" not in state:
        raise ValueError(
            f"{path}: not an FID InceptionV3 state dict (expected torch-fidelity / pytorch-fid weights)"
        )
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as e:  # pragma: no cover - torchmetrics is a dependency of the eval extra
        raise ImportError(
            "FID/KID need torchmetrics and torch-fidelity: pip install 'handfirst[eval]'"
        ) from e
    net = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=path
    )
    net.num_features = 2048
    return net.to(device).eval()


def to_uint8_batch(images: list[np.ndarray], size: int = INCEPTION_SIZE) -> torch.Tensor:
    """RGB (H, W, 3) uint8 arrays -> (N, 3, size, size) uint8 tensor (PIL bicubic resize)."""
    out = np.stack(
        [
            np.asarray(
                Image.fromarray(np.asarray(im, dtype=np.uint8))
                .convert("RGB")
                .resize((size, size), Image.BICUBIC)
            )
            for im in images
        ]
    )
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@dataclass
class KIDConfig:
    subsets: int = 100  # random subsets averaged by KID
    subset_size: int = 1000  # capped at the smaller set's size
    degree: int = 3  # polynomial kernel (x.y / d + coef) ** degree, as in Binkowski et al. 2018
    coef: float = 1.0


class DistributionDistance:
    """Accumulates features of real and generated images; computes FID and KID.

    `extractor` maps a (N, 3, H, W) uint8 tensor to (N, D) features; `num_features` is D.
    Use `update_images` for pixels or `update_features` for features computed elsewhere.
    """

    def __init__(
        self,
        extractor: Callable[[torch.Tensor], torch.Tensor] | None,
        num_features: int,
        kid: KIDConfig | None = None,
        device: str = "cpu",
        image_size: int = INCEPTION_SIZE,
    ):
        self.extractor = extractor
        self.num_features = int(num_features)
        self.kid = kid or KIDConfig()
        self.device = device
        self.image_size = image_size
        self._features: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    @torch.no_grad()
    def features(self, images: list[np.ndarray]) -> torch.Tensor:
        """(N, D) features of RGB uint8 (H, W, 3) images."""
        if self.extractor is None:
            raise RuntimeError("no feature extractor was given; use update_features")
        batch = to_uint8_batch(images, self.image_size).to(self.device)
        return self.extractor(batch)

    def update_images(self, images: list[np.ndarray], real: bool) -> None:
        """Add RGB uint8 (H, W, 3) images of one side (real=True for the reference set)."""
        if images:
            self.update_features(self.features(images), real)

    def update_features(self, features: torch.Tensor | np.ndarray, real: bool) -> None:
        feats = torch.as_tensor(features).detach().to("cpu", torch.float64).reshape(len(features), -1)
        if feats.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} features per image, got {feats.shape[1]}")
        self._features[bool(real)].append(feats)

    def counts(self) -> tuple[int, int]:
        return tuple(sum(len(f) for f in self._features[side]) for side in (True, False))

    def compute(self, seed: int = 0) -> dict:
        """{"fid", "kid", "kid_std", "n_real", "n_fake"}; raises ValueError with fewer than 2 per side."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        n_real, n_fake = self.counts()
        if min(n_real, n_fake) < 2:
            raise ValueError(
                f"FID/KID need at least 2 images per side, got {n_real} real and {n_fake} generated"
            )
        real = torch.cat(self._features[True])
        fake = torch.cat(self._features[False])
        fid = FrechetInceptionDistance(feature=PassThrough(self.num_features), reset_real_features=True)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        subset = min(self.kid.subset_size, n_real, n_fake)
        kid = KernelInceptionDistance(
            feature=PassThrough(self.num_features),
            subsets=self.kid.subsets,
            subset_size=subset,
            degree=self.kid.degree,
            coef=self.kid.coef,
        )
        kid.update(real, real=True)
        kid.update(fake, real=False)
        # KID draws random subsets; seed them so a report is reproducible.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            kid_mean, kid_std = kid.compute()
        return {
            "fid": float(fid.compute()),
            "kid": float(kid_mean),
            "kid_std": float(kid_std),
            "kid_subset_size": subset,
            "n_real": n_real,
            "n_fake": n_fake,
        }
