"""The classification head: shapes, the network without it unchanged, segmentation-only checkpoints, stop-gradient."""

from __future__ import annotations

import pytest
import torch

from medseg3d.core.checkpoint_format import save_checkpoint
from medseg3d.core.errors import InputError
from medseg3d.networks import res_unet
from medseg3d.networks.classifier import ClassificationHead, attach_classifier
from medseg3d.training.recipes import start_from

SMALL = {"channels": (4, 8, 16), "strides": (2, 2)}


@pytest.mark.parametrize("kind", ["unet", "dynunet"])
@pytest.mark.parametrize("spatial_dims, size", [(3, (32, 24, 16)), (2, (40, 24))])
def test_head_adds_class_channels_constant_over_the_patch(kind: str, spatial_dims: int, size: tuple) -> None:
    torch.manual_seed(0)
    net = res_unet(4, 3, kind=kind, spatial_dims=spatial_dims, num_classes=2, **SMALL)
    x = torch.randn(2, 4, *size)
    out = net(x)
    assert out.shape == (2, 5, *size) and net.classifier.num_classes == 2
    classes = out[:, 3:]
    assert torch.equal(classes, classes[(..., *([slice(0, 1)] * spatial_dims))].expand_as(classes))
    assert not torch.equal(classes[0], classes[1])  # each sample its own logits
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 5, *size)


@pytest.mark.parametrize("kind", ["unet", "dynunet"])
def test_without_head_the_network_is_todays_and_with_it_the_segmentation_part_too(kind: str) -> None:
    """Same seed: the head-less network has the weights and output the factory always gave; the multitask one
    holds the same segmentation weights (the head is drawn after them) and the same segmentation logits."""
    x = torch.randn(1, 4, 32, 24, 16)
    torch.manual_seed(3)
    plain = res_unet(4, 3, kind=kind, **SMALL)
    torch.manual_seed(3)
    again = res_unet(4, 3, kind=kind, num_classes=0, **SMALL)
    torch.manual_seed(3)
    multi = res_unet(4, 3, kind=kind, num_classes=3, **SMALL)
    assert type(again) is type(plain) and not hasattr(again, "classifier")
    for net in (plain, again, multi):
        net.eval()
    with torch.no_grad():
        reference = plain(x)
        assert torch.equal(again(x), reference)
        assert torch.equal(multi(x)[:, :3], reference)
    state = multi.state_dict()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    assert {k for k in state if k not in plain.state_dict()} == {k for k in state if k.startswith("classifier.")}


def test_a_segmentation_checkpoint_loads_into_the_multitask_network(tmp_path) -> None:
    """``init_weights``: a trained segmentation model's checkpoint starts a multitask run, the head fresh."""
    torch.manual_seed(0)
    trained = res_unet(4, 3, **SMALL)
    save_checkpoint({"network": trained.state_dict()}, tmp_path / "seg.pt")
    torch.manual_seed(1)
    multi = res_unet(4, 3, num_classes=2, **SMALL)
    head_before = {k: v.clone() for k, v in multi.classifier.state_dict().items()}
    start_from(multi, tmp_path / "seg.pt")
    assert all(torch.equal(multi.state_dict()[k], v) for k, v in trained.state_dict().items())
    assert all(torch.equal(multi.classifier.state_dict()[k], v) for k, v in head_before.items())  # fresh head kept
    save_checkpoint({"network": res_unet(4, 3, channels=(4, 8), strides=(2,)).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="do not fit the network") as info:
        start_from(multi, tmp_path / "other.pt")
    assert "other.pt" in str(info.value)
    save_checkpoint({"network": multi.state_dict()}, tmp_path / "multi.pt")
    with pytest.raises(InputError, match="unexpected"):  # head weights into a segmentation network: refused
        start_from(trained, tmp_path / "multi.pt")
    with pytest.raises(InputError, match="names no file"):
        start_from(trained, tmp_path / "none.pt")


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_stop_gradient_keeps_the_classification_loss_out_of_the_segmentation_network(stop_gradient: bool) -> None:
    torch.manual_seed(0)
    net = res_unet(4, 3, num_classes=2, classifier={"stop_gradient": stop_gradient}, **SMALL)
    x = torch.randn(2, 4, 32, 24, 16)
    out = net(x)
    seg_loss = out[:, :3].square().mean()
    cls_loss = torch.nn.functional.cross_entropy(out[:, 3:, 0, 0, 0], torch.tensor([0, 1]))
    seg_params = [p for n, p in net.named_parameters() if not n.startswith("classifier.")]
    seg_only = torch.autograd.grad(seg_loss, seg_params, retain_graph=True)
    both = torch.autograd.grad(seg_loss + cls_loss, seg_params, retain_graph=True)
    same = all(torch.equal(a, b) for a, b in zip(seg_only, both, strict=True))
    assert same is stop_gradient
    head_grads = torch.autograd.grad(cls_loss, list(net.classifier.mlp.parameters()))
    assert all(g.abs().sum() > 0 for g in head_grads)


def test_bad_head_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes >= 2"):
        res_unet(4, 3, num_classes=1, **SMALL)
    with pytest.raises(ValueError, match="no deep_supervision"):
        res_unet(4, 3, kind="dynunet", deep_supervision=1, num_classes=2, **SMALL)
    with pytest.raises(ValueError, match="pyramid"):
        ClassificationHead(8, 2, pyramid=(0,))
    net = res_unet(4, 3, num_classes=2, **SMALL)
    with pytest.raises(ValueError, match="has a 'classifier' already"):
        attach_classifier(net, 2)
    with pytest.raises(TypeError, match="UNet or DynUNet"):
        attach_classifier(torch.nn.Conv3d(4, 3, 1), 2)
