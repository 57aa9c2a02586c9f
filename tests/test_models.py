"""Model zoo: shapes on MNIST/CIFAR/small inputs, the features -> embed -> classifier split, seeded re-init with
PyTorch's default distributions, what each norm normalises, and argument validation."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill_lib.models import MODEL_NAMES, NORMS, ConvNet, default_init_, get_model

INPUTS = [(1, (28, 28)), (3, (32, 32)), (1, (16, 16))]  # (channels, image size): MNIST, CIFAR, small
CONVNET = [(8, 4, 4), (8, 4, 4), (8, 2, 2)]
FEATURES = {  # feature map (d, h, w) for each of INPUTS
    **dict.fromkeys(["convnet", "convnet_bn", "convnet_ln", "convnet_gn", "convnet_nonorm"], CONVNET),
    "mlp": [(128, 1, 1)] * 3,
    "lenet": [(16, 5, 5), (16, 5, 5), (16, 2, 2)],
    "alexnet": [(192, 4, 4), (192, 4, 4), (192, 2, 2)],
    "vgg11": [(512, 1, 1)] * 3,
    "vgg11_bn": [(512, 1, 1)] * 3,
    "resnet18": [(512, 4, 4), (512, 4, 4), (512, 2, 2)],
    "resnet18_bn": [(512, 4, 4), (512, 4, 4), (512, 2, 2)],
}
EMBED = {"mlp": 128, "lenet": 84, "resnet18": 512, "resnet18_bn": 512}  # others: d * h * w
NORM_OF = {"convnet": "instancenorm", "convnet_bn": "batchnorm", "convnet_ln": "layernorm", "convnet_gn": "groupnorm",
           "convnet_nonorm": "none"}
GROUPS = {"instancenorm": 8, "layernorm": 1, "groupnorm": 4}  # GroupNorm groups at width 8


def build(name, channels=3, image_size=(16, 16), num_classes=5, **kwargs):
    if name.startswith("convnet"):
        kwargs.setdefault("width", 8)
    return get_model(name, channels, num_classes, image_size, **kwargs)


def test_model_names():
    assert set(FEATURES) == set(MODEL_NAMES) and len(MODEL_NAMES) == 12
    assert NORMS == ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")


@pytest.mark.parametrize("case", range(len(INPUTS)))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shapes(name, case):
    channels, size = INPUTS[case]
    model = build(name, channels, size)
    x = torch.randn(2, channels, *size)
    with torch.no_grad():
        feats, logits = model.features(x), model(x)
    assert model.feature_shape == FEATURES[name][case] and feats.shape == (2, *FEATURES[name][case])
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == EMBED.get(name, math.prod(FEATURES[name][case]))
    assert logits.shape == (2, 5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_features_embed_classifier_split_and_gradients(name):
    model = build(name, 3, (12, 12))
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    emb, logits = model.embed(x), model(x)
    assert emb.shape == (2, model.classifier.in_features)
    torch.testing.assert_close(model.classifier(emb), logits)
    if name.startswith("convnet"):
        torch.testing.assert_close(emb, model.features(x).flatten(1))
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()  # distillation differentiates w.r.t. the images
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_convnet_handles_28x28_like_32x32():
    mnist, cifar = ConvNet(1, 10, (28, 28), width=8), ConvNet(3, 10, (32, 32), width=8)
    assert mnist.feature_shape == cifar.feature_shape == (8, 4, 4)
    assert mnist.body[0].padding == (3, 3) and cifar.body[0].padding == (1, 1)


@pytest.mark.parametrize("name", NORM_OF)
def test_convnet_blocks_follow_options(name):
    model = build(name, depth=2, activation="gelu", pooling="maxpool")
    norm = NORM_OF[name]
    norm_type = {"batchnorm": nn.BatchNorm2d, "none": nn.Identity}.get(norm, nn.GroupNorm)
    assert [type(m) for m in model.body] == [nn.Conv2d, norm_type, nn.GELU, nn.MaxPool2d] * 2
    if norm in GROUPS:
        assert model.body[1].num_groups == GROUPS[norm] and model.body[1].affine
    assert model.feature_shape == (8, 4, 4)


def test_convnet_depth_and_pooling_set_the_feature_map():
    assert ConvNet(3, 10, (16, 16), width=8, pooling="none").feature_shape == (8, 16, 16)
    assert ConvNet(3, 10, (16, 16), width=8, depth=4).feature_shape == (8, 1, 1)
    assert ConvNet(3, 10, (16, 12), width=8, depth=2).feature_shape == (8, 4, 3)
    with pytest.raises(ValueError, match="too small"):
        ConvNet(3, 10, (16, 16), width=8, depth=5)


def test_get_model_forwards_convnet_options():
    model = get_model("convnet", 3, 10, (32, 32), width=16, depth=2, norm="layernorm", activation="leakyrelu")
    assert isinstance(model, ConvNet) and model.feature_shape == (16, 8, 8)
    assert isinstance(model.body[2], nn.LeakyReLU) and model.body[1].num_groups == 1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_reset_parameters_is_seeded_complete_and_leaves_global_rng(name):
    model = build(name, 1, (16, 16))
    with torch.no_grad():
        for t in model.state_dict().values():  # parameters and buffers (batch-norm statistics)
            t.fill_(7)
    rng = torch.get_rng_state()
    model.reset_parameters(torch.Generator().manual_seed(3))
    first = {k: t.clone() for k, t in model.state_dict().items()}
    assert not any((t == 7).any() for t in first.values()), "some parameter or buffer was not re-initialised"
    model.reset_parameters(torch.Generator().manual_seed(4))
    changed = {k for k, t in model.state_dict().items() if not torch.equal(t, first[k])}
    drawn = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
             for p, _ in m.named_parameters(recurse=False)}
    assert changed == drawn  # another seed re-draws every conv/linear tensor; norms stay at 1 / 0
    model.reset_parameters(torch.Generator().manual_seed(3))
    assert all(torch.equal(t, first[k]) for k, t in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_reset_parameters_reproduces_pytorch_default_init_exactly():
    torch.manual_seed(5)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.GroupNorm(2, 8), nn.Linear(20, 4))
    net = copy.deepcopy(ref)
    with torch.no_grad():
        for t in net.state_dict().values():
            t.fill_(7)
    default_init_(net, torch.Generator().manual_seed(5))
    for (k, t), r in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(t, r), k


def test_reset_parameters_matches_default_bounds_on_a_large_layer():
    model = ConvNet(3, 10, (32, 32), width=64)
    model.reset_parameters(torch.Generator().manual_seed(0))
    conv = model.body[4]  # second conv: fan_in 64 * 3 * 3
    bound = 1 / math.sqrt(64 * 9)
    w = conv.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert abs(w.mean()) < 0.02 * bound and abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.02
    assert conv.bias.abs().max() <= bound
    assert model.classifier.weight.abs().max() <= 1 / math.sqrt(64 * 4 * 4)
    assert torch.equal(model.body[1].weight, torch.ones(64)) and torch.equal(model.body[1].bias, torch.zeros(64))


def test_resnet_is_built_with_the_default_init_not_torchvisions():
    model = get_model("resnet18", 3, 10, (32, 32))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.weight.abs().max() <= 1 / math.sqrt(m.weight[0].numel()) for m in convs)  # kaiming-normal exceeds


def test_default_init_refuses_modules_it_cannot_initialise():
    with pytest.raises(TypeError, match="Embedding"):
        default_init_(nn.Sequential(nn.Linear(2, 2), nn.Embedding(3, 2)), torch.Generator())


@pytest.mark.parametrize("norm", GROUPS)
def test_group_norms_normalise_what_they_should(norm):
    model = ConvNet(3, 10, (16, 16), width=8, norm=norm)
    seen = {}
    model.body[1].register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0], y=out))
    model(torch.randn(2, 3, 16, 16) * 3 + 1)
    x, y, size = seen["x"], seen["y"], 8 // GROUPS[norm]  # channels per group
    expected = torch.empty_like(x)
    for n in range(x.shape[0]):  # affine is the identity (weight 1, bias 0) after init
        for c in range(0, 8, size):
            chunk = x[n, c:c + size]
            expected[n, c:c + size] = (chunk - chunk.mean()) / (chunk.var(unbiased=False) + 1e-5).sqrt()
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
    if norm == "instancenorm":
        torch.testing.assert_close(y.mean((2, 3)), torch.zeros(2, 8), atol=1e-5, rtol=0)
        torch.testing.assert_close(y.var((2, 3), unbiased=False), torch.ones(2, 8), atol=1e-3, rtol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_only_batch_norm_in_train_mode_mixes_samples(norm):
    torch.manual_seed(0)
    model = ConvNet(3, 10, (16, 16), width=8, norm=norm)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        mixed = not torch.allclose(model(x)[:2], model(x[:2]), atol=1e-5)
        model.eval()
        assert torch.allclose(model(x)[:2], model(x[:2]), atol=1e-5)
    assert mixed == (norm == "batchnorm")


@pytest.mark.parametrize("args, kwargs, match", [
    (("resnet", 3, 10, (32, 32)), {}, "unknown model 'resnet'.*convnet_bn.*resnet18_bn"),
    (("convnet", 0, 10, (32, 32)), {}, "channels must be an integer >= 1"),
    (("lenet", 3, 1, (32, 32)), {}, "num_classes must be an integer >= 2"),
    (("convnet", 3, 10, (32,)), {}, r"\(height, width\)"),
    (("convnet", 3, 10, (32, 32)), {"width": 0}, "width must be an integer >= 1"),
    (("convnet", 3, 10, (32, 32)), {"depth": 0}, "depth must be an integer >= 1"),
    (("convnet", 3, 10, (32, 32)), {"activation": "tanh"}, "unknown activation 'tanh'.*leakyrelu"),
    (("convnet", 3, 10, (32, 32)), {"norm": "rms"}, "unknown norm 'rms'.*instancenorm"),
    (("convnet", 3, 10, (32, 32)), {"pooling": "stride"}, "unknown pooling 'stride'.*avgpool"),
    (("convnet_bn", 3, 10, (32, 32)), {"norm": "none"}, r"does not take \['norm'\]"),
    (("vgg11", 3, 10, (32, 32)), {"width": 8}, r"does not take \['width'\]; options allowed: none"),
    (("convnet", 3, 10, (4, 4)), {}, "image_size .* too small for ConvNet"),
    (("lenet", 3, 10, (2, 2)), {}, "too small for LeNet"),
    (("resnet18", 3, 10, (8, 8)), {}, "too small for ResNet18"),
])
def test_bad_arguments_raise_helpful_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_model(*args, **kwargs)
