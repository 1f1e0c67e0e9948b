"""FID / KID known answers with small extractors, and the real Inception loading path."""

import numpy as np
import pytest
import torch

from generation.evaluate.feature_distance import DistributionDistance, KIDConfig, load_inception


def _gaussian(n, d, seed):
    return np.random.default_rng(seed).normal(size=(n, d))


def test_fid_identical_sets_is_zero():
    x = _gaussian(300, 8, 0)
    dd = DistributionDistance(None, 8)
    dd.update_features(x, real=True)
    dd.update_features(x.copy(), real=False)
    r = dd.compute()
    assert r["fid"] == pytest.approx(0.0, abs=1e-6)
    assert (r["n_real"], r["n_fake"]) == (300, 300)


def test_fid_mean_shift_is_squared_shift():
    # Same sample covariance on both sides, so FID = ||delta||^2 exactly.
    x = _gaussian(300, 8, 1)
    delta = np.linspace(-1.0, 2.0, 8)
    dd = DistributionDistance(None, 8)
    dd.update_features(x, real=True)
    dd.update_features(x + delta, real=False)
    assert dd.compute()["fid"] == pytest.approx(float(delta @ delta), rel=1e-6)


def test_fid_scaled_set_is_trace_of_covariance():
    # Y = 2X: ||2m - m||^2 + tr(S) + tr(4S) - 2 tr((4 S^2)^(1/2)) = ||m||^2 + tr(S).
    x = _gaussian(400, 6, 2)
    dd = DistributionDistance(None, 6)
    dd.update_features(x, real=True)
    dd.update_features(2 * x, real=False)
    m = x.mean(axis=0)
    assert dd.compute()["fid"] == pytest.approx(float(m @ m + np.trace(np.cov(x.T))), rel=1e-6)


def test_kid_closed_form_for_shifted_1d_gaussian():
    # 1-d features, kernel k(x, y) = (x y + 1)^3, so the mean of k over all pairs (i, j) of two
    # samples is  E[k] = m3 m3' + 3 m2 m2' + 3 m1 m1' + 1  with m_i their i-th sample moments.
    # X is antithetic and standardised, so its moments are exactly (0, 1, 0); Y = X + d then has
    # (d, 1 + d^2, d^3 + 3d). Hence the all-pairs MMD^2 = (d^3 + 3d)^2 + 3 d^4 + 3 d^2; KID's unbiased
    # estimator leaves out the i == j terms of the within-set sums, which is the exact correction below.
    half = np.random.default_rng(3).normal(size=600)
    x = np.concatenate([half, -half])
    x /= np.sqrt((x**2).mean())
    d = 0.5
    y = x + d
    n = len(x)
    e_xx, e_yy, e_xy = 4.0, (d**3 + 3 * d) ** 2 + 3 * (1 + d**2) ** 2 + 3 * d**2 + 1, 3 * (1 + d**2) + 1
    assert e_xx + e_yy - 2 * e_xy == pytest.approx((d**3 + 3 * d) ** 2 + 3 * d**4 + 3 * d**2)
    diag_x, diag_y = ((x**2 + 1) ** 3).sum(), ((y**2 + 1) ** 3).sum()
    expected = (n * n * e_xx - diag_x + n * n * e_yy - diag_y) / (n * (n - 1)) - 2 * e_xy
    dd = DistributionDistance(None, 1, kid=KIDConfig(subsets=2, subset_size=10_000))
    dd.update_features(x[:, None], real=True)
    dd.update_features(y[:, None], real=False)
    r = dd.compute()
    assert r["kid_subset_size"] == n
    assert r["kid"] == pytest.approx(expected, rel=1e-9)


def test_kid_point_masses_and_identical_sets():
    a, b = np.full((50, 4), 1.0), np.full((50, 4), 3.0)
    dd = DistributionDistance(None, 4, kid=KIDConfig(subsets=3, subset_size=20))
    dd.update_features(a, real=True)
    dd.update_features(b, real=False)
    k = lambda u, v: (u @ v / 4 + 1) ** 3  # noqa: E731
    expected = k(a[0], a[0]) + k(b[0], b[0]) - 2 * k(a[0], b[0])
    r = dd.compute()
    assert r["kid"] == pytest.approx(expected) and r["fid"] == pytest.approx(16.0)

    x = _gaussian(200, 4, 4)
    same = DistributionDistance(None, 4, kid=KIDConfig(subsets=5, subset_size=200))
    same.update_features(x, real=True)
    same.update_features(x, real=False)
    assert abs(same.compute()["kid"]) < 0.01 * expected


def test_small_conv_extractor_through_images():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    extractor = lambda x: net(x.float() / 255.0)  # noqa: E731
    rng = np.random.default_rng(5)
    imgs = [rng.integers(0, 255, (40, 30, 3), dtype=np.uint8) for _ in range(6)]
    dd = DistributionDistance(extractor, 4, image_size=32)
    dd.update_images(imgs, real=True)
    dd.update_images([im.copy() for im in imgs], real=False)
    assert dd.compute()["fid"] == pytest.approx(0.0, abs=1e-6)
    bright = DistributionDistance(extractor, 4, image_size=32)
    bright.update_images(imgs, real=True)
    bright.update_images([np.clip(im.astype(int) + 80, 0, 255).astype(np.uint8) for im in imgs], real=False)
    assert bright.compute()["fid"] > 1e-4


def test_too_few_images_is_a_clear_error():
    dd = DistributionDistance(None, 3)
    dd.update_features(np.zeros((1, 3)), real=True)
    with pytest.raises(ValueError, match="at least 2 images per side, got 1 real and 0 generated"):
        dd.compute()


@pytest.mark.slow  # builds InceptionV3
def test_inception_loads_local_weights_only(tmp_path, monkeypatch):
    """The real InceptionV3 class with a random state dict saved to a local file."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")

    torch.manual_seed(0)
    # Build the network once without weights to obtain a state dict of the right layout.
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    state = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    monkeypatch.undo()
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    net = load_inception(str(path))
    feats = net(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert feats.shape == (2, 2048)

    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not an FID InceptionV3 state dict"):
        load_inception(str(bad))
