"""Latent caching: VAE-encode the training images once, keyed by row id, in a side folder.

VAE encoding dominates small-batch training of the hand generator and is a fifth of a stage-2 step on
a CPU, and neither trainer's images change between epochs (no random augmentation), so the posterior
of every image (mean and log-variance, (2C, h, w) float16) is computed once and stored in
``CACHE/chunk-00000.safetensors`` files of `chunk_size` rows plus ``CACHE/index.json`` (row ids,
shapes and the fingerprint of what was encoded). Training samples ``mean + std * noise`` from the
stored posterior, exactly what ``vae.encode(x).latent_dist.sample()`` draws.

The fingerprint covers the data and the VAE; a cache whose fingerprint differs is rebuilt, never
used silently. Files are read lazily (memory-mapped) so a cache larger than RAM works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors import safe_open
from safetensors.torch import save_file

from manifests.progress import progress_bar

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"


def vae_fingerprint(vae) -> str:
    """sha1 of the VAE's config and weights (a different VAE gives different latents)."""
    h = hashlib.sha1(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class LatentCache:
    """Read side: ``cache.get(ids)`` -> (B, 2C, h, w) float32 posterior parameters."""

    def __init__(self, path: str):
        self.path = path
        with open(os.path.join(path, INDEX_FILE), encoding="utf-8") as f:
            self.index = json.load(f)
        self.position = {rid: i for i, rid in enumerate(self.index["ids"])}
        self.chunk_size = int(self.index["chunk_size"])
        self._handles: dict[int, object] = {}

    def __getstate__(self):  # file handles do not cross process boundaries
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return len(self.position)

    @property
    def fingerprint(self) -> str:
        return self.index["fingerprint"]

    @classmethod
    def open_if_valid(cls, path: str, expected_fingerprint: str) -> LatentCache | None:
        """The cache at `path` if it is complete and built from the same data and VAE, else None."""
        if not os.path.isfile(os.path.join(path, INDEX_FILE)):
            return None
        cache = cls(path)
        if cache.fingerprint != expected_fingerprint:
            logger.info("latent cache %s was built from other data or another VAE; rebuilding", path)
            return None
        return cache

    def _chunk(self, c: int):
        if c not in self._handles:
            self._handles[c] = safe_open(
                os.path.join(self.path, f"chunk-{c:05d}.safetensors"), framework="pt"
            )
        return self._handles[c]

    def get(self, ids: Iterable[str]) -> torch.Tensor:
        rows = []
        for rid in ids:
            i = self.position.get(rid)
            if i is None:
                raise KeyError(f"{rid!r} is not in the latent cache {self.path} (built from other data?)")
            c, r = divmod(i, self.chunk_size)
            rows.append(self._chunk(c).get_slice("moments")[r : r + 1])
        return torch.cat(rows).float()

    @staticmethod
    def sample(moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Posterior parameters -> one latent draw (before the VAE scaling factor)."""
        return DiagonalGaussianDistribution(moments).sample(generator=generator)

    @classmethod
    def build(
        cls,
        path: str,
        batches: Iterable[tuple[list[str], torch.Tensor]],
        encode: Callable,
        expected_fingerprint: str,
        total: int | None = None,
        chunk_size: int = 4096,
    ) -> LatentCache:
        """Encode every (ids, pixel_values) batch with `encode` (-> (B, 2C, h, w)) and write the cache.

        Written to ``PATH.tmp`` and renamed when complete, so an interrupted build is never used.
        """
        tmp = path.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        ids: list[str] = []
        pending: list[torch.Tensor] = []
        n_pending, chunk, shape = 0, 0, None

        def write(rows: torch.Tensor):
            nonlocal chunk
            save_file({"moments": rows.contiguous()}, os.path.join(tmp, f"chunk-{chunk:05d}.safetensors"))
            chunk += 1

        with torch.no_grad():
            for batch_ids, pixels in progress_bar(batches, desc="caching latents", unit="batch", total=total):
                moments = encode(pixels).to(torch.float16).cpu()
                shape = list(moments.shape[1:])
                pending.append(moments)
                ids.extend(batch_ids)
                n_pending += len(batch_ids)
                while n_pending >= chunk_size:
                    rows = torch.cat(pending)
                    write(rows[:chunk_size])
                    pending, n_pending = [rows[chunk_size:]], n_pending - chunk_size
        if n_pending:
            write(torch.cat(pending))
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids while building the latent cache (is the row id column unique?)")
        with open(os.path.join(tmp, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump(
                {"ids": ids, "chunk_size": chunk_size, "shape": shape, "fingerprint": expected_fingerprint}, f
            )
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        logger.info("cached %d latents in %s", len(ids), path)
        return cls(path)


def encode_moments(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> (B, 2C, h, w) posterior parameters (mean, log-variance)."""
    return vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.parameters


def cache_paths(root: str, sources: int) -> list[str]:
    """One cache per manifest (row ids are unique within a manifest only): ``root`` itself, or
    ``root/source-<i>`` when there are several."""
    return [root] if sources == 1 else [os.path.join(root, f"source-{i}") for i in range(sources)]


def ensure_caches(
    accelerator,
    root: str,
    keys: list[dict],
    vae,
    batches: Callable[[int], tuple[Iterable[tuple[list[str], torch.Tensor]], int | None]],
) -> list[LatentCache]:
    """The caches of every source, opened if built from the same data (`keys[i]`, what selects and
    frames source i's images) and the same `vae`, else built by the main process from
    ``batches(i) -> ((ids, pixels) batches, number of batches)`` through `vae` (`encode_moments`); the
    other processes wait for it."""
    vae_print = vae_fingerprint(vae)
    paths = cache_paths(root, len(keys))
    for i, (path, key) in enumerate(zip(paths, keys)):
        expected = fingerprint({**key, "vae": vae_print})
        if accelerator.is_main_process and LatentCache.open_if_valid(path, expected) is None:
            data, total = batches(i)
            LatentCache.build(path, data, lambda pixels: encode_moments(vae, pixels), expected, total=total)
    accelerator.wait_for_everyone()
    return [LatentCache(path) for path in paths]


def cached_moments(caches: list[LatentCache], ids: list[str], sources: torch.Tensor | None) -> torch.Tensor:
    """(B, 2C, h, w) float32 posteriors of a batch's rows; `sources` (B,) names each row's manifest
    when there are several caches."""
    if len(caches) == 1:
        return caches[0].get(ids)
    return torch.cat([caches[k].get([rid]) for rid, k in zip(ids, sources.tolist())])
