"""Patch embeddings run as one matrix product instead of a convolution.

Qwen2-VL-family vision encoders embed their patches with an ``nn.Conv3d`` whose kernel equals its
stride and the input patch itself: each output is the dot product of one whole patch with each
filter, i.e. a linear layer. PyTorch's convolution kernels handle that shape badly (im2col, and on
some GPU/dtype pairs cuDNN paths orders of magnitude slower than a GEMM); on the CPU the tiny model's
batch of 16 images took 4.1 ms as a convolution and 1.3 ms as a matrix product.

The module becomes a :class:`PatchConv3d`, a ``Conv3d`` subclass with the same weights and state-dict
keys (checkpoints, LoRA and ``save_pretrained`` see nothing new); only its ``forward`` differs, taking
the matrix-product path for inputs exactly one kernel in size. A module that accelerate has already
hooked (``device_map`` dispatch) keeps calling the convolution's own ``forward``: same result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchConv3d(nn.Conv3d):
    """A non-overlapping ``Conv3d`` over inputs of one kernel's size, computed as ``F.linear``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Module's own name)
        if tuple(input.shape[2:]) != tuple(self.kernel_size):
            return super().forward(input)
        out = F.linear(input.reshape(input.shape[0], -1), self.weight.reshape(self.out_channels, -1), self.bias)
        return out.reshape(input.shape[0], self.out_channels, 1, 1, 1)


def is_patch_projection(module: nn.Module) -> bool:
    """A plain ``Conv3d`` whose windows never overlap or skip anything (kernel == stride, no padding,
    dilation or groups): over one kernel-sized input it is a linear layer."""
    return (type(module) is nn.Conv3d and tuple(module.stride) == tuple(module.kernel_size)
            and tuple(module.padding) == (0, 0, 0) and tuple(module.dilation) == (1, 1, 1)
            and module.groups == 1 and module.padding_mode == "zeros")


def project_patches_by_matmul(model: nn.Module) -> int:
    """Switch every patch-projection ``Conv3d`` of ``model`` to :class:`PatchConv3d`, in place; the
    number switched (0 for models without one, e.g. LLaVA's ``Conv2d`` patch embedding)."""
    switched = 0
    for module in model.modules():
        if is_patch_projection(module):
            module.__class__ = PatchConv3d
            switched += 1
    return switched
