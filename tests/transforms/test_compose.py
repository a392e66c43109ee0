"""TrainCompose (meta tracking off in the random part only) and RandTorchGaussianNoise(d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, get_track_meta
from monai.data.dataset import CacheDataset
from monai.transforms import Compose, Orientationd, RandFlipd, RandGaussianNoise, Spacingd, Transform

from medseg3d.transforms import RandTorchGaussianNoise, RandTorchGaussianNoised, TrainCompose


class _Probe(Transform):
    """Records the meta-tracking setting it ran under and the type of what it was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, str]] = []

    def __call__(self, data: dict) -> dict:
        self.seen.append((get_track_meta(), type(data["image"]).__name__))
        return data


class _Boom(RandFlipd):
    def __call__(self, data, lazy=None):
        raise RuntimeError("boom")


def _image() -> MetaTensor:
    affine = torch.diag(torch.tensor([2.0, 1.5, 3.0, 1.0]))
    return MetaTensor(torch.arange(6 * 5 * 4, dtype=torch.float32).reshape(1, 6, 5, 4), affine=affine)


def test_deterministic_part_keeps_meta_random_part_drops_it() -> None:
    before, after = _Probe(), _Probe()
    spacing = Spacingd("image", pixdim=(1.0, 1.5, 1.5))  # needs the affine: 6x5x4 at 2x1.5x3 mm -> 11x5x7
    compose = TrainCompose([Orientationd("image", "RAS"), spacing, before, RandFlipd("image", prob=1.0), after])
    out = compose({"image": _image()})
    assert before.seen == [(True, "MetaTensor")]
    assert after.seen == [(False, "Tensor")]
    assert type(out["image"]) is torch.Tensor and tuple(out["image"].shape) == (1, 11, 5, 7)
    assert get_track_meta(), "the setting is restored"
    reference = Compose([Orientationd("image", "RAS"), spacing, RandFlipd("image", prob=1.0)])({"image": _image()})
    assert torch.equal(out["image"], reference["image"].as_tensor()), "the same voxels as MONAI's Compose"


def test_start_end_as_cached_datasets_call_it() -> None:
    probe = _Probe()
    compose = TrainCompose([Orientationd("image", "RAS"), RandFlipd("image", prob=1.0), probe])
    cached = compose({"image": _image()}, end=1)  # what CacheDataset caches
    assert isinstance(cached["image"], MetaTensor)
    compose(cached, start=1)
    assert probe.seen == [(False, "Tensor")]
    dataset = CacheDataset([{"image": _image()}], transform=compose, progress=False)
    assert type(dataset[0]["image"]) is torch.Tensor and probe.seen[-1] == (False, "Tensor")
    assert isinstance(dataset._cache[0]["image"], MetaTensor), "the cached part ran with tracking on"
    assert type(compose.flatten()) is TrainCompose


def test_setting_restored_when_a_transform_raises() -> None:
    with pytest.raises(RuntimeError, match="applying transform") as raised:
        TrainCompose([_Boom("image")])({"image": _image()})
    assert "boom" in str(raised.value.__cause__)
    assert get_track_meta()


def test_torch_noise_matches_monai_distribution_and_is_reproducible() -> None:
    shape = (2, 48, 40, 32)
    ours = RandTorchGaussianNoise(prob=1.0, mean=0.3, std=0.2, sample_std=False)
    monai_noise = RandGaussianNoise(prob=1.0, mean=0.3, std=0.2, sample_std=False)
    a = ours.set_random_state(3)(torch.zeros(shape))
    b = monai_noise.set_random_state(3)(torch.zeros(shape))
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    for x in (a, b):
        assert abs(float(x.mean()) - 0.3) < 0.005 and abs(float(x.std()) - 0.2) < 0.005
    assert torch.equal(a, ours.set_random_state(3)(torch.zeros(shape)))
    assert not torch.equal(a, ours.set_random_state(4)(torch.zeros(shape)))
    # sample_std: the standard deviation is drawn from U(0, std), as MONAI draws it
    stds = [
        float(RandTorchGaussianNoise(prob=1.0, std=1.0).set_random_state(s)(torch.zeros(1, 16, 16, 16)).std())
        for s in range(200)
    ]
    assert 0.45 < np.mean(stds) < 0.55 and min(stds) < 0.05 and max(stds) > 0.95
    assert RandTorchGaussianNoise(prob=0.0)(torch.ones(1, 4, 4, 4)).eq(1).all()
    assert RandTorchGaussianNoise(prob=1.0, dtype=np.float64)(torch.zeros(1, 4, 4, 4)).dtype == torch.float64


def test_dictionary_noise_shares_one_draw_across_keys() -> None:
    noise = RandTorchGaussianNoised(["a", "b"], prob=1.0, std=0.5)
    noise.set_random_state(0)
    out = noise({"a": torch.zeros(1, 8, 6, 4), "b": torch.ones(1, 8, 6, 4)})
    assert isinstance(noise.rand_gaussian_noise, RandTorchGaussianNoise)
    assert torch.allclose(out["b"] - 1, out["a"]) and float(out["a"].abs().sum()) > 0
    again = RandTorchGaussianNoised(["a", "b"], prob=1.0, std=0.5).set_random_state(0)
    assert torch.equal(again({"a": torch.zeros(1, 8, 6, 4), "b": torch.ones(1, 8, 6, 4)})["a"], out["a"])
