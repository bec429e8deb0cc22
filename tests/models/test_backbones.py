import pytest
import timm
import torch

from wsp.models.backbones import create_backbone, export_backbone, load_weights


def test_registered_tiny_resnext_is_a_resnext():
    model = create_backbone("wsp_resnext_tiny")
    assert model.layer1[0].conv2.groups == 8  # grouped convolution: cardinality 8
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, model.num_features)


def test_32x48d_has_the_papers_width_and_size():
    with torch.device("meta"):
        model = create_backbone("resnext101_32x48d")
    params = sum(p.numel() for p in model.parameters()) + 2048 * 1000 + 1000  # + the 1k-class fc
    assert params == pytest.approx(829e6, rel=0.03)
    assert model.layer1[0].conv2.groups == 32 and model.layer1[0].conv2.in_channels == 32 * 48


def test_ig_aliases_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="32x8d"):
        create_backbone("ig_resnext101_32x16d")
    with pytest.raises(ValueError, match="not a timm model"):
        create_backbone("resnext_nope")


def test_export_loads_strictly_into_timm(tmp_path):
    model = create_backbone("wsp_resnext_tiny")
    path = export_backbone(model, tmp_path / "backbone.safetensors")
    again = timm.create_model("wsp_resnext_tiny", pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(path)))  # fmt: skip
    x = torch.randn(1, 3, 64, 64)
    model.eval(), again.eval()
    assert torch.equal(model(x), again(x))


def test_export_loads_with_the_overlay_that_drops_the_head(tmp_path):
    """The issue's call: a model keeping timm's default head, every backbone weight from the file."""
    model = create_backbone("wsp_resnext_tiny")
    path = export_backbone(model, tmp_path / "backbone.safetensors")
    again = timm.create_model("wsp_resnext_tiny", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=-1))  # fmt: skip
    loaded = again.state_dict()
    assert all(torch.equal(tensor, loaded[name]) for name, tensor in model.state_dict().items())
    x = torch.randn(1, 3, 64, 64)
    model.eval(), again.eval()
    assert torch.equal(model(x), again.forward_head(again.forward_features(x), pre_logits=True))


def test_mismatched_weights_are_an_error_not_a_partial_load(tmp_path):
    path = export_backbone(create_backbone("wsp_resnext_tiny"), tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        load_weights(create_backbone("wsp_resnext_small"), path)


@pytest.mark.parametrize("name", ["wsp_resnext_tiny", "resnext101_32x4d"])
def test_last_batchnorm_of_every_residual_block_starts_at_zero(name):
    model = create_backbone(name)
    blocks = [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
    assert blocks and all(not block.bn3.weight.any() for block in blocks)
    assert model.bn1.weight.all()  # the stem's BatchNorm is not a residual branch's last


def test_torchvision_layout_wsl_weights_load_strictly(tmp_path):
    """WSL-Images checkpoints (torch hub) are torchvision ResNeXts: they load into timm's model as they are."""
    import torchvision

    reference = torchvision.models.resnext101_32x8d(weights=None).eval()
    path = tmp_path / "ig_resnext101_32x8-c38310e5.pth"
    torch.save(reference.state_dict(), path)
    model = timm.create_model("resnext101_32x8d", num_classes=1000).eval()
    load_weights(model, path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-4)
    backbone = create_backbone("resnext101_32x8d")
    load_weights(backbone, path)  # a backbone leaves the released head out
    assert torch.equal(backbone.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    with pytest.raises(
        ValueError, match="does not fit model resnext101_32x4d: size mismatch for layer1.0.conv1.weight"
    ):
        load_weights(timm.create_model("resnext101_32x4d", num_classes=1000), path)
