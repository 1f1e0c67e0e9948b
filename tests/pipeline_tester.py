"""The checks every handfirst pipeline passes, in the style of diffusers' `PipelineTesterMixin`.

A test class mixes this in and says how to build its tiny pipeline and how to call it:

- ``pipeline_class``: the `DiffusionPipeline` subclass (for `from_pretrained`);
- ``get_pipeline()``: the tiny pipeline, built with a fixed seed;
- ``get_inputs(seed, index)``: the keyword arguments of a one-image call (`index` varies the request,
  so a batch is not one request repeated); ``seed`` fixes the noise. It is called afresh for every
  call, since a generator in the arguments is consumed by the call.

A pipeline that draws several images in one call also mixes in `BatchTesterMixin`, with
``batch_inputs(items)``: one call's arguments drawing every item of `items` (a list of ``get_inputs``
results).

The output compared is ``result.images`` as float numpy in [0, 1].
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


class PipelineTesterMixin:
    pipeline_class = None

    def get_pipeline(self):
        raise NotImplementedError

    def get_inputs(self, seed: int = 0, index: int = 0) -> dict:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def tester_pipe(self):
        pipe = self.get_pipeline()
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def images(self, pipe, **kwargs) -> np.ndarray:
        out = pipe(**{**kwargs, "output_type": "np"}).images
        return np.asarray(out, dtype=np.float32)

    def test_same_seed_same_images_other_seed_other_images(self, tester_pipe):
        a = self.images(tester_pipe, **self.get_inputs(seed=1))
        np.testing.assert_array_equal(a, self.images(tester_pipe, **self.get_inputs(seed=1)))
        assert np.abs(a - self.images(tester_pipe, **self.get_inputs(seed=2))).max() > 1e-6
        assert a.ndim == 4 and a.shape[-1] == 3 and 0.0 <= a.min() and a.max() <= 1.0

    def test_numpy_and_torch_outputs_agree(self, tester_pipe):
        # Fresh inputs per call: a generator in them is consumed by the call.
        np_images = self.images(tester_pipe, **self.get_inputs(seed=3))
        pt = tester_pipe(**{**self.get_inputs(seed=3), "output_type": "pt"}).images
        assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float32
        np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_images, atol=1e-6)

    def test_save_and_load_give_identical_images(self, tester_pipe, tmp_path):
        tester_pipe.save_pretrained(tmp_path / "saved")
        weights = list((tmp_path / "saved").rglob("*.safetensors"))
        assert weights and not list((tmp_path / "saved").rglob("*.bin"))  # safetensors only
        loaded = self.pipeline_class.from_pretrained(tmp_path / "saved")
        loaded.set_progress_bar_config(disable=True)
        np.testing.assert_array_equal(
            self.images(loaded, **self.get_inputs(seed=5)),
            self.images(tester_pipe, **self.get_inputs(seed=5)),
        )

    def test_device_and_dtype_follow_to(self):
        pipe = self.get_pipeline()
        pipe.set_progress_bar_config(disable=True)
        assert pipe.device.type == "cpu" and pipe.dtype == torch.float32
        pipe.to(torch.float64)
        modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
        assert modules and all(p.dtype == torch.float64 for m in modules for p in m.parameters())
        assert pipe.dtype == torch.float64
        # Noise, conditions, masks and guidance are made in the models' dtype: a tensor made in float32
        # would stop the call with a dtype mismatch. (The noise itself differs: torch draws other
        # numbers for float64, so the image is not compared with the float32 one.)
        out = pipe(**{**self.get_inputs(seed=7), "output_type": "pt"}).images
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


class BatchTesterMixin:
    """For pipelines that batch: one call drawing several requests gives each single call's image."""

    batch_size = 2
    # Batched and single calls run the same arithmetic in different tensor shapes, so they agree to
    # float32 rounding, not bit for bit.
    batch_atol = 1e-5

    def batch_inputs(self, items: list[dict]) -> dict:
        raise NotImplementedError

    def test_a_batch_matches_its_single_calls(self, tester_pipe):
        items = [self.get_inputs(seed=10 + i, index=i) for i in range(self.batch_size)]
        batch = self.images(tester_pipe, **self.batch_inputs(items))
        assert batch.shape[0] == self.batch_size
        for i in range(self.batch_size):
            single = self.images(tester_pipe, **self.get_inputs(seed=10 + i, index=i))[0]
            np.testing.assert_allclose(batch[i], single, atol=self.batch_atol)
