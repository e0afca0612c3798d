import pytest
import torch

from robgen import RobgenError
from robgen.models import ARCHS, ModelMeta, build_classifier


@pytest.mark.parametrize("arch", ["cnn-tiny", "cnn-small", "preact-resnet18", "resnet18"])
def test_architectures_map_images_to_logits(arch):
    model = build_classifier(ModelMeta(arch, 7)).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_tiny_imagenet_resnet_takes_64x64():
    model = build_classifier(ModelMeta("resnet18-tiny-imagenet", 200, (3, 64, 64))).eval()
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 200)


def test_grayscale_inputs():
    model = build_classifier(ModelMeta("cnn-small", 10, (1, 28, 28), (0.5,), (0.25,))).eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "arch, params, keys",
    [
        ("wrn-28-10", 36_479_194, ["block1.layer.0.convShortcut.weight", "block3.layer.3.bn2.running_var", "fc.bias"]),
        ("wrn-34-10", 46_160_474, ["block2.layer.4.conv2.weight", "bn1.weight"]),
        ("preact-resnet18", 11_172_170, ["layer2.0.shortcut.0.weight", "bn.running_mean", "linear.weight"]),
        ("resnet18", 11_173_962, ["layer3.0.shortcut.1.running_var", "bn1.weight", "linear.weight"]),
    ],
)
def test_parameter_names_and_counts_follow_robustbench(arch, params, keys):
    net = ARCHS.get(arch)(num_classes=10)
    state = net.state_dict()
    assert all(k in state for k in keys)
    assert sum(p.numel() for p in net.parameters()) == params


def test_normalisation_lives_inside_the_wrapper():
    meta = ModelMeta("cnn-tiny", 3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = build_classifier(meta).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), model.net((x - 0.5) / 0.25))


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(RobgenError, match="unknown architecture 'vit'.*cnn-small.*wrn-34-10"):
        build_classifier(ModelMeta("vit", 10))


def test_class_index_checks_range_and_names():
    meta = ModelMeta("cnn-tiny", 3, class_names=["cat", "dog", "eel"])
    assert meta.class_index("dog") == 1 and meta.class_index("2") == 2
    with pytest.raises(RobgenError, match=r"unknown class 12 for a 3-class model; valid: 0..2 \(0=cat"):
        meta.class_index(12)
    with pytest.raises(RobgenError, match="unknown class 'cow'"):
        meta.class_index("cow")
