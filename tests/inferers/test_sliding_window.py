"""FastSlidingWindowInferer against MONAI's stock ``sliding_window_inference`` on the same real networks.

Exactness where the arithmetic is the same (no crop; a pointwise network with the crop; mirroring TTA against
mirrored stock passes), agreement of label maps where the crop changes the windows (a tiny Res-UNet trained in
the test), and the parts around it: shapes, B > 1, MetaTensor, weight changes, stitching fallback, errors.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from medseg3d.inferers.sliding_window import (
    CPU_MIN_BATCH,
    FastSlidingWindowInferer,
    _Net,
    choose_stitch_device,
    flip_combinations,
    foreground_box,
    grow_box,
    window_slices,
    with_stitch_fallback,
)
from medseg3d.networks import res_unet

ROI = (32, 32, 32)


def head_volume(shape: tuple[int, int, int], seed: int, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4-channel "head" (ellipsoid, label 1) with a "lesion" (ball, label 2) inside exact-zero background.

    Returns:
        image (4, X, Y, Z) float32 and label (X, Y, Z) int64 in {0, 1, 2}.
    """
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    centre = torch.tensor(shape, dtype=torch.float32)[:, None, None, None] / 2
    radii = torch.tensor([0.3 * shape[0], 0.32 * shape[1], 0.3 * shape[2]])[:, None, None, None]
    head = (((grid - centre) / radii) ** 2).sum(0) <= 1
    lesion = (((grid - centre - torch.tensor([4.0, -3.0, 2.0])[:, None, None, None]) / 6.0) ** 2).sum(0) <= 1
    label = head.long() + (lesion & head).long()
    means = torch.tensor([[0.0, 1.0, 2.5], [0.0, -0.5, 1.5], [0.0, 0.8, -1.0], [0.0, 1.2, 2.0]])
    image = (means[:, label] + noise * torch.randn((4, *shape), generator=g)) * head
    return image, label


def stock(x: torch.Tensor, net: torch.nn.Module, roi=ROI, overlap=0.5, mode="gaussian", flips=()) -> torch.Tensor:
    """MONAI's sliding window on ``x`` mirrored along the spatial ``flips`` (and mirrored back)."""
    dims = [a + 2 for a in flips]
    with torch.no_grad():
        out = sliding_window_inference(x.flip(dims) if dims else x, roi, 2, net, overlap=overlap, mode=mode)
    return out.flip(dims) if dims else out


def mean_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean Dice over the foreground labels present in either label map."""
    labels = sorted(set(torch.cat([a.unique(), b.unique()]).tolist()) - {0})
    return sum(2 * ((a == k) & (b == k)).sum().item() / ((a == k).sum() + (b == k).sum()).item() for k in labels) / len(
        labels
    )


class Counting(torch.nn.Module):
    """A network that counts the windows it sees."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.windows = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += len(x)
        return self.net(x)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return res_unet(4, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The test's Res-UNet trained for 100 steps on 32^3 crops of a head volume (about 5 s on 2 cores)."""
    image, label = head_volume((70, 64, 52), seed=1)
    torch.manual_seed(1)
    model = res_unet(4, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(2)
    for _ in range(100):
        starts = [[int(torch.randint(0, n - 31, (1,), generator=g)) for n in label.shape] for _ in range(2)]
        crops = [tuple(slice(s, s + 32) for s in st) for st in starts]
        x = torch.stack([image[(slice(None), *c)] for c in crops])
        loss = torch.nn.functional.cross_entropy(model(x), torch.stack([label[c] for c in crops]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), image, label


@pytest.mark.parametrize(
    "shape, roi, overlap, mode, sw_batch_size",
    [
        pytest.param((70, 64, 52), ROI, 0.5, "gaussian", 2, id="non-divisible"),
        pytest.param((41, 37, 29), (32, 24, 16), 0.25, "constant", 3, id="non-cubic-roi-constant"),
        pytest.param((20, 40, 36), ROI, 0.5, "gaussian", 1, id="x-smaller-than-roi"),
        pytest.param((20, 18, 12), ROI, 0.5, "gaussian", 4, id="all-smaller-than-roi"),
        pytest.param((24, 28, 20), (16, 16, 16), 0.625, "gaussian", 8, id="overlap-0.625"),
    ],
)
def test_without_crop_equals_stock(net, shape, roi, overlap, mode, sw_batch_size):
    image, _ = head_volume(shape, seed=3)
    x = torch.zeros((1, 4, shape[0] + 40, *shape[1:]))  # 40 empty slices: windows there are skipped
    x[0, :, 40:] = image
    counting = Counting(net)
    inferer = FastSlidingWindowInferer(roi, sw_batch_size, overlap, mode, crop_foreground=False)
    ours = inferer(x, counting)
    ref = stock(x, net, roi, overlap, mode)
    assert ours.shape == ref.shape == (1, 3, shape[0] + 40, *shape[1:])
    assert ours.dtype == torch.float32 and not ours.is_inference()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    padded = torch.nn.functional.pad(
        x, [p for r, n in zip(roi[::-1], x.shape[:1:-1], strict=True) for p in _pads(r, n)]
    )
    windows = window_slices(padded.shape[2:], roi, (overlap,) * 3)
    busy = sum(bool(padded[(0, slice(None), *w)].any()) for w in windows)
    assert 2 <= busy < len(windows)
    assert counting.windows == busy + CPU_MIN_BATCH  # the empty windows ran once, as one zero window (and its copy)


def _pads(roi: int, size: int) -> tuple[int, int]:
    """Stock padding of an axis shorter than the roi: half before, the rest after."""
    diff = max(roi - size, 0)
    return diff // 2, diff - diff // 2


def test_crop_is_exact_for_a_pointwise_network():
    """Without spatial context the windows' placement cannot matter: the crop must reproduce the stock path
    inside the box, and outside it the network's output on background (its bias) from the box's faces."""
    torch.manual_seed(4)
    pointwise = torch.nn.Conv3d(4, 3, kernel_size=1).eval()
    image, _ = head_volume((50, 44, 36), seed=4)
    x = torch.zeros((1, 4, 90, 70, 60))
    x[0, :, 30:80, 10:54, 20:56] = image
    counting = Counting(pointwise)
    ours = FastSlidingWindowInferer(ROI, 2, 0.5)(x, counting)
    torch.testing.assert_close(ours, stock(x, pointwise), atol=1e-5, rtol=1e-5)
    assert counting.windows < len(window_slices(x.shape[2:], ROI, (0.5,) * 3)) / 2


def test_crop_agrees_with_stock_on_a_trained_network(trained):
    """The crop moves the windows, and an instance-norm network's output depends on each window's content, so
    label maps differ at a few boundary voxels: measured mean Dice 0.986 to stock with the default 8-voxel
    margin (0.944 without), and as close to the truth as stock's. A box shifted by a voxel would cost far more."""
    model, image, label = trained
    counting = Counting(model)
    ours = FastSlidingWindowInferer(ROI, 2, 0.5)(image[None], counting).argmax(1)[0]
    ref = stock(image[None], model).argmax(1)[0]
    assert counting.windows < len(window_slices(label.shape, ROI, (0.5,) * 3))
    assert mean_dice(ref, label) > 0.95  # the network learned the task, so agreement means something
    assert mean_dice(ours, ref) >= 0.975
    assert mean_dice(ours, label) >= mean_dice(ref, label) - 0.005
    box = foreground_box(image)
    outside = torch.ones_like(label, dtype=torch.bool)
    outside[box] = False
    assert (ours[outside] == 0).all() and (ref[outside] == 0).float().mean() > 0.999


def test_crop_of_an_image_smaller_than_the_roi_equals_stock(net):
    image, _ = head_volume((20, 28, 24), seed=13)  # the box grows to the roi, i.e. to the whole (padded) image
    ours = FastSlidingWindowInferer(ROI, 2, 0.5)(image[None], net)
    torch.testing.assert_close(ours, stock(image[None], net), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "tta_axes",
    [pytest.param((0, 1, 2), id="8-flips"), pytest.param((0, 2), id="4-flips"), pytest.param((1,), id="2-flips")],
)
def test_tta_equals_mean_of_mirrored_stock_passes(net, tta_axes):
    # 80, 64, 32 = 32 + k * 16: the window grid is symmetric, so mirroring windows = mirroring the volume;
    # the first 40 slices are empty, so the cached (mirrored) zero-window output is used too
    image, _ = head_volume((40, 64, 32), seed=5)
    x = torch.zeros((1, 4, 80, 64, 32))
    x[0, :, 40:] = image
    ours = FastSlidingWindowInferer(ROI, 4, 0.5, crop_foreground=False, tta=True, tta_axes=tta_axes)(x, net)
    flips = flip_combinations(tta_axes)
    ref = sum(stock(x, net, flips=f) for f in flips) / len(flips)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_batch_items_are_cropped_and_inferred_independently(net):
    a, _ = head_volume((60, 50, 40), seed=6)
    b = torch.zeros_like(a)
    b[:, 5:35, 10:50, 2:30] = head_volume((30, 40, 28), seed=7)[0]
    inferer = FastSlidingWindowInferer(ROI, 2, 0.5)
    both = inferer(torch.stack([a, b]), net)
    torch.testing.assert_close(both[0], inferer(a[None], net)[0])
    torch.testing.assert_close(both[1], inferer(b[None], net)[0])


def test_empty_window_output_follows_weight_changes(net):
    model = copy.deepcopy(net)
    x = torch.zeros((1, 4, 70, 40, 36))
    x[0, :, 40:] = head_volume((30, 40, 36), seed=8)[0]
    inferer = FastSlidingWindowInferer(ROI, 2, 0.5, crop_foreground=False)
    torch.testing.assert_close(inferer(x, model), stock(x, model), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # an optimizer step between two validations does this
        for p in model.parameters():
            p.mul_(1.5)
    torch.testing.assert_close(inferer(x, model), stock(x, model), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "outside, expected",
    [
        pytest.param(-3.0, [-3.0, -3.0, -3.0], id="number"),
        pytest.param([1.0, -2.0, 0.5], [1.0, -2.0, 0.5], id="per-channel"),
    ],
)
def test_outside_values(net, outside, expected):
    x = torch.zeros((1, 4, 80, 64, 48))
    x[0, :, 20:60, 10:50, 8:40] = head_volume((40, 40, 32), seed=9)[0]
    out = FastSlidingWindowInferer(ROI, 2, 0.5, outside=outside)(x, net)[0]
    box = grow_box(foreground_box(x[0], margin=(8, 8, 8)), ROI, x.shape[2:])
    mask = torch.ones(x.shape[2:], dtype=torch.bool)
    mask[box] = False
    assert torch.equal(out[:, mask], torch.tensor(expected)[:, None].expand(-1, int(mask.sum())))
    auto = FastSlidingWindowInferer(ROI, 2, 0.5)(x, net)[0]
    inner = auto[(slice(None), *box)]
    faces = torch.cat(
        [inner[:, [0, -1]].flatten(1), inner[:, :, [0, -1]].flatten(1), inner[:, :, :, [0, -1]].flatten(1)], 1
    )
    torch.testing.assert_close(auto[:, mask], faces.median(1).values[:, None].expand(-1, int(mask.sum())))
    torch.testing.assert_close(auto[(slice(None), *box)], out[(slice(None), *box)])


def test_metatensor_in_metatensor_out_and_invertible(net):
    from monai.transforms import DivisiblePadd, Invertd

    image = MetaTensor(head_volume((70, 64, 52), seed=10)[0], affine=torch.diag(torch.tensor([1.5, 1.0, 2.0, 1.0])))
    preprocessing = DivisiblePadd(keys="image", k=16)
    data = preprocessing({"image": image})
    out = FastSlidingWindowInferer(ROI, 2, 0.5)(data["image"][None], net)
    assert isinstance(out, MetaTensor) and out.shape == (1, 3, 80, 64, 64)
    torch.testing.assert_close(out.affine, data["image"].affine)
    assert [op["class"] for op in out.applied_operations] == ["DivisiblePad"]
    data["pred"] = out[0]
    restored = Invertd(keys="pred", transform=preprocessing, orig_keys="image")(data)["pred"]
    assert restored.shape == (3, 70, 64, 52)
    out.requires_grad_(True)  # a normal tensor, not an inference-mode one


def test_foreground_threshold_crops_to_the_body():
    ct = torch.full((1, 50, 40, 30), -1.0)  # air after intensity scaling
    ct[0, 10:30, 5:35, 3:27] = 0.4
    assert foreground_box(ct) == (slice(0, 50), slice(0, 40), slice(0, 30))
    assert foreground_box(ct, threshold=-0.5, margin=(2, 2, 2)) == (slice(8, 32), slice(3, 37), slice(1, 29))
    assert foreground_box(torch.zeros(2, 5, 5, 5)) is None


@pytest.mark.parametrize(
    "box, roi, shape, expected",
    [
        pytest.param((slice(2, 6),) * 3, (8, 8, 8), (20, 20, 20), (slice(0, 8),) * 3, id="grow-at-border"),
        pytest.param((slice(8, 10),) * 3, (4, 4, 4), (20, 20, 20), (slice(7, 11),) * 3, id="grow-centred"),
        pytest.param((slice(14, 19),) * 3, (8, 8, 8), (20, 20, 20), (slice(12, 20),) * 3, id="grow-at-far-border"),
        pytest.param(
            (slice(1, 5),) * 3, (8, 8, 8), (6, 20, 20), (slice(0, 6), slice(0, 8), slice(0, 8)), id="image-small"
        ),
        pytest.param((slice(2, 18),) * 3, (8, 8, 8), (20, 20, 20), (slice(2, 18),) * 3, id="large-enough"),
    ],
)
def test_grow_box(box, roi, shape, expected):
    assert grow_box(box, roi, shape) == expected


@pytest.mark.parametrize(
    "preferred, needed, free, expected",
    [
        pytest.param("cuda", 10, 5, "cpu", id="gpu-too-small"),
        pytest.param("cuda", 5, 10, "cuda", id="gpu-fits"),
        pytest.param("cuda", 10, None, "cuda", id="free-unknown"),
        pytest.param("cpu", 10, 5, "cpu", id="cpu-stays"),
    ],
)
def test_choose_stitch_device(preferred, needed, free, expected):
    assert choose_stitch_device(torch.device(preferred), needed, free) == torch.device(expected)


class OutOfMemoryOnce(torch.nn.Module):
    """A network whose first call fails as a full GPU would (to exercise the fallback on a CPU machine)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.failed = net, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            self.failed = True
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def test_stitching_falls_back_to_cpu_on_out_of_memory(net, caplog):
    x = torch.zeros((1, 4, 60, 50, 40))
    x[0, :, 10:50, 5:45, 4:36] = head_volume((40, 40, 32), seed=11)[0]
    inferer = FastSlidingWindowInferer(ROI, 2, 0.5)
    expected = inferer(x, net)[0]
    devices = []

    def attempt(device: torch.device, flaky: torch.nn.Module) -> torch.Tensor:
        devices.append(device.type)
        return inferer._infer_image(x[0], _Net(flaky, (), {}, torch.device("cpu")), device)

    with caplog.at_level(logging.WARNING, logger="medseg3d.inferers.sliding_window"):
        for _ in range(2):
            flaky = OutOfMemoryOnce(net)
            out = with_stitch_fallback(lambda d, f=flaky: attempt(d, f), torch.device("cuda"), inferer._warn_fallback)
            torch.testing.assert_close(out, expected)
    assert devices == ["cuda", "cpu", "cuda", "cpu"]
    assert sum("stitching on the CPU" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(torch.cuda.OutOfMemoryError):  # nothing to fall back to on the CPU
        with_stitch_fallback(lambda d: attempt(d, OutOfMemoryOnce(net)), torch.device("cpu"), inferer._warn_fallback)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"roi_size": 0}, "roi_size must be positive", id="roi-zero"),
        pytest.param({"roi_size": (32, 32)}, "roi_size must be one number or three", id="roi-2d"),
        pytest.param({"roi_size": 32.5}, "roi_size must be whole numbers", id="roi-fraction"),
        pytest.param({"sw_batch_size": 0}, "sw_batch_size must be an int >= 1", id="batch-zero"),
        pytest.param({"overlap": 1.0}, r"overlap must be in \[0, 1\)", id="overlap-one"),
        pytest.param({"mode": "linear"}, "mode must be one of", id="mode"),
        pytest.param({"sigma_scale": 0}, "sigma_scale must be positive", id="sigma"),
        pytest.param({"margin": -1}, "margin must be >= 0", id="margin"),
        pytest.param({"foreground_threshold": float("nan")}, "foreground_threshold must be", id="threshold-nan"),
        pytest.param({"tta_axes": (0, 3)}, "tta_axes must be distinct spatial axes", id="tta-axis"),
        pytest.param({"tta_axes": (1, 1)}, "tta_axes must be distinct spatial axes", id="tta-repeated"),
        pytest.param({"outside": "median"}, "outside must be 'auto'", id="outside-word"),
        pytest.param({"outside": []}, "outside must be 'auto'", id="outside-empty"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FastSlidingWindowInferer(**{"roi_size": ROI, **kwargs})


def test_bad_call_arguments(net):
    x = torch.zeros((1, 4, 40, 36, 32))
    x[0, :, 4:30, 4:30, 4:28] = 1.0
    with pytest.raises(ValueError, match=r"inputs must have shape \(B, C, X, Y, Z\)"):
        FastSlidingWindowInferer(ROI)(x[0], net)
    with pytest.raises(ValueError, match="outside has 2 values but the network outputs 3 channels"):
        FastSlidingWindowInferer(ROI, outside=[0.0, 1.0])(torch.nn.functional.pad(x, (8, 8)), net)
    with pytest.raises(ValueError, match=r"the network must return one tensor \(2, K, 32, 32, 32\)"):
        FastSlidingWindowInferer(ROI)(x, lambda w: w[:, :, ::2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu(net):
    image, _ = head_volume((70, 64, 52), seed=12)
    x = torch.zeros((1, 4, 90, 64, 52))
    x[0, :, 10:80] = image
    cpu = FastSlidingWindowInferer(ROI, 2, 0.5)(x, net)
    gpu_net = copy.deepcopy(net).cuda()
    # float32 on the GPU only with TF32 off: cuDNN runs float32 convolutions in TF32 by default (Ampere and later)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        fp32 = FastSlidingWindowInferer(ROI, 4, 0.5, amp=False)(x.cuda(), gpu_net)
    assert fp32.is_cuda
    torch.testing.assert_close(fp32.cpu(), cpu, atol=1e-3, rtol=1e-3)
    fp16 = FastSlidingWindowInferer(ROI, 4, 0.5, device="cpu", tta=True)(x.cuda(), gpu_net)
    assert fp16.device.type == "cpu"
    cpu_tta = FastSlidingWindowInferer(ROI, 2, 0.5, tta=True)(x, net)
    assert (fp16.argmax(1) == cpu_tta.argmax(1)).float().mean() > 0.99
