"""Text-image consistency: CLIP score of each image against its caption.

CLIP score (Hessel et al. 2021, as torchmetrics' `CLIPScore` defines it) is
``100 * max(cos(E_image, E_text), 0)``, averaged over images. The model is loaded from a local folder
(``CLIPModel.from_pretrained(path)`` with its tokenizer and image processor saved beside it, e.g. a
download of ``openai/clip-vit-large-patch14``); nothing is downloaded.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


class ClipScorer:
    """CLIP score of RGB images against texts, with a CLIP model loaded from a local folder."""

    def __init__(self, path: str, device: str = "cpu"):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        self.device = device
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def scores(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        """(N,) CLIP scores in [0, 100] of (H, W, 3) uint8 images against their texts."""
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts")
        if not images:
            return np.zeros(0)
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        img = self.model.get_image_features(pixel_values=pixels)
        txt = self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        img = _as_embedding(img)
        txt = _as_embedding(txt)
        cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
        return (100.0 * cos.clamp(min=0)).double().cpu().numpy()


def _as_embedding(out) -> torch.Tensor:
    """transformers 5 may return a model output object instead of a tensor; take the pooled projection."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")
