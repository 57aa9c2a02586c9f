"""Networks for distillation and evaluation: the DC/DM ConvNet and the compact benchmark zoo.

Every model splits into ``features`` (last feature map, N x d x h x w) -> ``embed`` (N x D, what distribution
matching compares) -> ``classifier`` (the final ``nn.Linear``), and can be re-drawn in place from a
``torch.Generator`` with :meth:`reset_parameters`, so a distillation loop samples a fresh random network each
iteration without building a module or touching the global RNG.
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict

import torch
import torch.nn as nn
from torch.nn import init

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTIVATIONS = ("relu", "leakyrelu", "sigmoid", "gelu")
POOLINGS = ("avgpool", "maxpool", "none")


# Norms as in the DC/DM code; instance and layer norm are GroupNorms with one group per channel / per sample.
_NORM_LAYERS = {
    "instancenorm": lambda c: nn.GroupNorm(c, c, affine=True),
    "batchnorm": nn.BatchNorm2d,
    "layernorm": lambda c: nn.GroupNorm(1, c, affine=True),  # normalises over (C, H, W) of each sample
    "groupnorm": lambda c: nn.GroupNorm(4, c, affine=True),
    "none": lambda c: nn.Identity(),
}
_ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
_POOLINGS = {"avgpool": lambda: nn.AvgPool2d(2, 2), "maxpool": lambda: nn.MaxPool2d(2, 2), "none": None}


def _choice(what: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {tuple(allowed)}")
    return value


def _at_least(what: str, value: int, low: int) -> int:
    if not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


def _first_padding(image_size: tuple[int, int]) -> tuple[int, int]:
    """Padding of a first conv3x3: 3 on 28-pixel (MNIST-like) sides so they are processed like 32-pixel ones (DC)."""
    return tuple(3 if side == 28 else 1 for side in image_size)


def default_init_(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Re-draw every parameter of ``module`` in place with PyTorch's default init, from ``generator`` only.

    Conv/Linear weights: kaiming_uniform_(a=sqrt(5)); biases U(+-1/sqrt(fan_in)); norm affine 1 / 0, and batch-norm
    running statistics reset, so the result is distributed like a freshly built net. Values are drawn on the
    generator's device and copied, so a CPU generator serves a net on any device (same seed, same weights).
    ``generator=None`` uses the global RNG. Raises TypeError on a parametrised module it cannot initialise.
    """
    def draw(param, fn, **kwargs):
        device = param.device if generator is None else generator.device
        param.copy_(fn(torch.empty(param.shape, dtype=param.dtype, device=device), generator=generator, **kwargs))

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                draw(m.weight, init.kaiming_uniform_, a=math.sqrt(5))
                if m.bias is not None:
                    bound = 1 / math.sqrt(m.weight[0].numel())
                    draw(m.bias, init.uniform_, a=-bound, b=bound)
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
                if m.affine:
                    m.weight.fill_(1)
                    m.bias.zero_()
            elif next(m.parameters(recurse=False), None) is not None:
                raise TypeError(f"default_init_ has no initialiser for {type(m).__name__}")


class _Net(nn.Module):
    """Shared interface: ``body`` -> features, ``head`` -> embed, ``classifier`` -> logits."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        self.channels = _at_least("channels", channels, 1)
        self.num_classes = _at_least("num_classes", num_classes, 2)
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width), got {image_size!r}")
        self.image_size = tuple(_at_least("image_size", side, 1) for side in image_size)

    def _build(self, make_body, make_head=lambda feature_shape: nn.Flatten()) -> None:
        """Build ``make_body()``, ``make_head(feature_shape)`` and a linear classifier sized by a dummy forward.

        Building happens on the meta device (free shape inference, no wasted init of large nets); the modules are
        then materialised on the default device and drawn once from the global RNG, as plain torch modules are.
        """
        device = torch.get_default_device()
        with torch.device("meta"):
            self.body = make_body().eval()  # eval: batch norm accepts the dummy batch of one
            try:
                feats = self.body(torch.zeros(1, self.channels, *self.image_size))
                self.feature_shape = tuple(feats.shape[1:])
                self.head = make_head(self.feature_shape)
                self.classifier = nn.Linear(self.head(feats).shape[1], self.num_classes)
            except (RuntimeError, ValueError) as err:
                raise ValueError(f"image_size {self.image_size} too small for {type(self).__name__}: {err}") from None
        self.train().to_empty(device=device)
        self.reset_parameters()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map, (N, d, h, w)."""
        return self.body(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, D) embedding the classifier reads."""
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw every parameter in place from ``generator`` (see :func:`default_init_`)."""
        default_init_(self, generator)


class ConvNet(_Net):
    """The DC/DM ConvNet: ``depth`` blocks of conv3x3 -> norm -> activation -> 2x2 pooling, then a linear layer.

    28x28 inputs get padding 3 in the first conv, so they reach the same feature map as 32x32 ones.
    """

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], width: int = 128, depth: int = 3,
                 activation: str = "relu", norm: str = "instancenorm", pooling: str = "avgpool"):
        super().__init__(channels, num_classes, image_size)
        _at_least("width", width, 1)
        _at_least("depth", depth, 1)
        act = _ACTIVATIONS[_choice("activation", activation, ACTIVATIONS)]
        norm_layer = _NORM_LAYERS[_choice("norm", norm, NORMS)]
        pool = _POOLINGS[_choice("pooling", pooling, POOLINGS)]

        def body():
            layers = []
            for d in range(depth):
                padding = _first_padding(self.image_size) if d == 0 else 1
                conv = nn.Conv2d(channels if d == 0 else width, width, 3, padding=padding)
                layers += [conv, norm_layer(width), act()]
                layers += [pool()] if pool else []
            return nn.Sequential(*layers)

        self._build(body)


class MLP(_Net):
    """flatten -> 128 -> relu -> 128 -> relu; features are the 128 hidden units as a (128, 1, 1) map."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__(channels, num_classes, image_size)
        self._build(lambda: nn.Sequential(
            nn.Flatten(), nn.Linear(channels * math.prod(self.image_size), 128), nn.ReLU(),
            nn.Linear(128, 128), nn.ReLU(), nn.Unflatten(1, (128, 1, 1))))


class LeNet(_Net):
    """DC's LeNet: two conv5x5/relu/maxpool stages (the features), then fc 120 -> fc 84 (the embedding).

    As in DC the first conv is padded for 1-channel input; below 16 pixels both convs are padded so they fit.
    """

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__(channels, num_classes, image_size)
        small = min(self.image_size) < 16
        self._build(
            lambda: nn.Sequential(
                nn.Conv2d(channels, 6, 5, padding=2 if channels == 1 or small else 0), nn.ReLU(), nn.MaxPool2d(2, 2),
                nn.Conv2d(6, 16, 5, padding=2 if small else 0), nn.ReLU(), nn.MaxPool2d(2, 2)),
            lambda shape: nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 120), nn.ReLU(),
                                        nn.Linear(120, 84), nn.ReLU()))


class AlexNet(_Net):
    """DC's compact AlexNet: five convs (128-192-256-192-192) with three 2x2 max-pools."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__(channels, num_classes, image_size)
        self._build(lambda: nn.Sequential(
            nn.Conv2d(channels, 128, 5, padding=4 if channels == 1 else 2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(192, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 192, 3, padding=1), nn.ReLU(),
            nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2)))


class VGG11(_Net):
    """VGG11 (conv3x3 -> norm -> relu, max-pools) with a linear classifier on the last map.

    On small images a max-pool is skipped when it would leave the following convs a 1-pixel map (where instance
    norm is undefined) or no map at all; 32x32 and 28x28 inputs keep all five, as in DC.
    """

    CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], norm: str = "instancenorm"):
        super().__init__(channels, num_classes, image_size)
        norm_layer = _NORM_LAYERS[_choice("norm", norm, ("instancenorm", "batchnorm"))]

        def body():
            padding = _first_padding(self.image_size)
            size = [side + 2 * (p - 1) for side, p in zip(self.image_size, padding)]  # after the first conv
            layers, in_channels = [], channels
            for i, v in enumerate(self.CONFIG):
                if v != "M":
                    layers += [nn.Conv2d(in_channels, v, 3, padding=padding), norm_layer(v), nn.ReLU()]
                    in_channels, padding = v, 1
                elif min(size) >= (2 if i == len(self.CONFIG) - 1 else 4):
                    layers.append(nn.MaxPool2d(2, 2))
                    size = [side // 2 for side in size]
            return nn.Sequential(*layers)

        self._build(body)


class ResNet18(_Net):
    """torchvision's ResNet18 with a CIFAR stem (conv3x3 stride 1, no max-pool); embedding = global average pool.

    Initialised with PyTorch's default init (as DC's ResNet) rather than torchvision's kaiming-normal, like every
    model here, so built and re-drawn nets come from the same distribution.
    """

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], norm: str = "instancenorm"):
        super().__init__(channels, num_classes, image_size)
        norm_layer = _NORM_LAYERS[_choice("norm", norm, ("instancenorm", "batchnorm"))]

        def body():
            import torchvision.models  # here, not at the top: it adds ~3 s to every process that imports distill_lib

            net = torchvision.models.resnet18(num_classes=num_classes, norm_layer=norm_layer)
            net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
            return nn.Sequential(OrderedDict(list(net.named_children())[:-2]))  # conv1 ... layer4

        self._build(body, lambda shape: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))


# name -> (constructor, fixed keyword arguments); only "convnet" takes further options from get_model.
_REGISTRY = {
    "convnet": (ConvNet, {}),
    "convnet_bn": (ConvNet, {"norm": "batchnorm"}),
    "convnet_ln": (ConvNet, {"norm": "layernorm"}),
    "convnet_gn": (ConvNet, {"norm": "groupnorm"}),
    "convnet_nonorm": (ConvNet, {"norm": "none"}),
    "mlp": (MLP, {}),
    "lenet": (LeNet, {}),
    "alexnet": (AlexNet, {}),
    "vgg11": (VGG11, {"norm": "instancenorm"}),
    "vgg11_bn": (VGG11, {"norm": "batchnorm"}),
    "resnet18": (ResNet18, {"norm": "instancenorm"}),
    "resnet18_bn": (ResNet18, {"norm": "batchnorm"}),
}
MODEL_NAMES = tuple(_REGISTRY)
CONVNET_OPTIONS = ("width", "depth", "activation", "norm", "pooling")


def get_model(name: str, channels: int, num_classes: int, image_size: tuple[int, int], **kwargs) -> nn.Module:
    """Build model ``name`` for (channels, image_size) inputs; ConvNet options (width, depth, activation, norm,
    pooling) pass through for the ``convnet*`` names (``norm`` only for plain "convnet", the others fix it)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    cls, fixed = _REGISTRY[name]
    allowed = set(CONVNET_OPTIONS) - set(fixed) if cls is ConvNet else set()
    if set(kwargs) - allowed:
        raise ValueError(f"model {name!r} does not take {sorted(set(kwargs) - allowed)}; "
                         f"options allowed: {sorted(allowed) or 'none'}")
    return cls(channels, num_classes, image_size, **fixed, **kwargs)
