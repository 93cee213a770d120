"""--pretrained: torchvision-format ImageNet weights from a local file, matched layer by layer."""

import pytest
import torch
import torchvision
from conftest import run_cli
from safetensors.torch import save_file

from stpcli.checkpoint import load_checkpoint
from stpcli.errors import StpError
from stpcli.models.ann import ANN
from stpcli.models.pretrained import load_pretrained
from stpcli.models.registry import make_spec


@pytest.mark.parametrize("arch,factory", [("vgg11", torchvision.models.vgg11_bn), ("resnet18", torchvision.models.resnet18)])
def test_torchvision_weights_land_in_the_right_layers(tmp_path, arch, factory):
    torch.manual_seed(0)
    reference = factory(weights=None)
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    path = tmp_path / f"{arch}.safetensors"
    save_file(state, str(path))
    pth = tmp_path / f"{arch}.pth"
    torch.save(state, pth)
    for source in (path, pth):
        model = ANN(make_spec(arch, 5, 32))
        load_pretrained(model, str(source))
        ours = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        theirs = [m for m in reference.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert torch.equal(a.weight, b.weight)
        our_bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        their_bn = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for a, b in zip(our_bn, their_bn):
            assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.weight, b.weight)


def test_mismatched_width_is_refused(tmp_path, dataset_dir):
    path = tmp_path / "vgg.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.vgg11_bn(weights=None).state_dict().items()}, str(path))
    with pytest.raises(StpError, match="--width 1"):
        load_pretrained(ANN(make_spec("vgg11", 5, 32, width=0.5)), str(path))
    out = tmp_path / "na.safetensors"
    run_cli(["train-ann", "--arch", "vgg11", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
             "--data", dataset_dir, "--pretrained", path, "--out", out])
    assert load_checkpoint(out).history[0]["options"]["pretrained"] == str(path)
