"""scikit-learn's digits and a small CNN: the quantization-aware-training demo's model.

The data set is the 1,797 8x8 grey-level images of handwritten digits that ship inside
scikit-learn (``sklearn.datasets.load_digits``, no network). Pixels are 0..16; they are
scaled to [0, 1] and split once, by a fixed seed, into 1,348 training and 449 test
images (25 %).

The network is two 3x3 convolutions and two linear layers (35,914 parameters)::

    [B, 1, 8, 8] -conv1 (1->32) -relu -maxpool2-> [B, 32, 4, 4]
                 -conv2 (32->64) -relu -maxpool2-> [B, 64, 2, 2] -flatten-> [B, 256]
                 -fc1 (256->64) -relu -fc2 (64->10)-> logits

conv2's reduction (im2col) axis holds 32 * 3 * 3 = 288 = 9 * 32 elements and fc1's 256,
so MX blocks of 32 tile both without padding.

>>> data = load_digits_data()
>>> model = train_digits(DigitsCNN(), data, epochs=20)     # 98.4 % test accuracy
>>> accuracy(model, data.test_x, data.test_y)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DEMO_SCHEMES", "DigitsCNN", "DigitsData", "accuracy", "demo_recipe", "load_digits_data",
           "ptq_qat_rows", "train_digits"]


@dataclass(frozen=True)
class DigitsData:
    """Images ``[n, 1, 8, 8]`` float32 in [0, 1] and labels ``[n]`` int64, split in two."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_data(seed: int = 0, test_fraction: float = 0.25) -> DigitsData:
    """The digits data set, shuffled by ``seed`` and split (the last ``test_fraction``)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits demo needs scikit-learn: pip install 'lowbit[model]'") \
            from None
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_test = round(len(y) * test_fraction)
    return DigitsData(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


class DigitsCNN(nn.Module):
    """The demo CNN (see the module docstring); weights drawn from ``seed``."""

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.fc1 = nn.Linear(256, 64)
            self.fc2 = nn.Linear(64, 10)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def train_digits(model: nn.Module, data: DigitsData, epochs: int = 30, lr: float = 3e-3,
                 batch_size: int = 64, seed: int = 0, params=None) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy; returns it in eval mode.

    Deterministic for a given ``seed`` (the batch order) on one machine. ``params``: the
    parameters to optimize (default: all of ``model``'s, e.g. learned QAT step sizes too).
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0; got {epochs!r}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters() if params is None else params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.train_y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(data.train_x[idx]), data.train_y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent (0..100), in eval mode (the model is left in eval mode)."""
    model.eval()
    return 100.0 * float((model(x).argmax(1) == y).float().mean())


# -- the QAT demo: PTQ vs QAT per scheme ------------------------------------------------

# (label, weight scheme of the inner layers, activation scheme of the inner layers)
DEMO_SCHEMES = [
    ("int8", "int8:channel", "int8"),
    ("int4", "int4:channel", "int8"),
    ("int2", "int2:channel", "int8"),
    ("ternary", "ternary:channel", "int8"),
    ("binary", "binary:channel", "int8"),
    ("mxfp4", "mxfp4", "mxfp4"),
]


def demo_recipe(weight: str, act: str, weight_clip: str = "minmax"):
    """The demo's per-layer recipe: conv1 and fc2 (first and last) at int8 weights (per
    channel) and int8 activations; conv2 and fc1 at ``weight``/``act``."""
    from ..recipes import Recipe, Rule

    plain = not weight.startswith("mx")
    inner = Rule("*", ("Conv2d", "Linear"), weight=weight, act=act,
                 weight_clip=weight_clip if plain else None)
    edge = {"weight": "int8:channel", "act": "int8", "weight_clip": weight_clip}
    return Recipe((Rule("conv1", **edge), Rule("fc2", **edge), inner), name=f"digits-{weight}")


def ptq_qat_rows(model: nn.Module, data: DigitsData, qat_epochs: int = 4,
                 qat_lr: float = 1e-3, schemes=None, seed: int = 0,
                 calib_batches: int = 8) -> list[dict]:
    """For each scheme: test accuracy (%) after PTQ and after QAT, starting from ``model``.

    PTQ: weights MSE-clipped per channel (``lb.calib.mse_search``; MX blocks: their own
    scales), activation ranges a moving average over ``calib_batches`` training batches of
    128, no training. QAT: learned steps (LSQ) for weights and activations, fine-tuned for
    ``qat_epochs`` epochs with Adam at ``qat_lr`` (cosine schedule). Both evaluate the
    fake-quantized model, which ``lowbit.qat.convert`` turns into real modules.
    """
    import copy

    from .. import qat

    rows = []
    for label, weight, act in schemes or DEMO_SCHEMES:
        ptq = qat.prepare(copy.deepcopy(model), demo_recipe(weight, act, "mse"), ranges="ema")
        ptq.train()
        with torch.no_grad():
            for i in range(calib_batches):
                ptq(data.train_x[i * 128:(i + 1) * 128])
        ptq_acc = accuracy(ptq, data.test_x, data.test_y)
        q = qat.prepare(copy.deepcopy(model), demo_recipe(weight, act), ranges="lsq")
        q.train()
        with torch.no_grad():  # initialise the learned steps on one batch before Adam sees them
            q(data.train_x[:128])
        train_digits(q, data, epochs=qat_epochs, lr=qat_lr, seed=seed)
        rows.append({"scheme": label, "weight": weight, "act": act, "ptq": ptq_acc,
                     "qat": accuracy(q, data.test_x, data.test_y)})
    return rows
