"""Patch embeddings as a matrix product (vlmexp.models.patch_projection): the tiny Qwen2.5-VL model
loaded through its adapter computes what the convolution computes, forward and backward, and its
checkpoint format is untouched."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForImageTextToText

from tests.conftest import compose_config
from tests.tiny_llava import build_tiny_llava_checkpoint
from vlmexp.hardware import Placement
from vlmexp.models.loading import load_model
from vlmexp.models.patch_projection import PatchConv3d, is_patch_projection, project_patches_by_matmul

CPU = Placement("cpu", "float32", "sdpa", None)


def _tiny_pair(tiny_checkpoint, cache_dir):
    """(the model as plain transformers loads it, the model as vlmexp's adapter loads it)."""
    model_cfg = compose_config([f"paths.cache_dir={cache_dir}"]).model
    plain = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    return plain, load_model(tiny_checkpoint, model_cfg, CPU)


def test_the_adapter_switches_the_patch_convolution_and_nothing_else(tiny_checkpoint, cache_dir):
    plain, switched = _tiny_pair(tiny_checkpoint, cache_dir)
    assert type(plain.model.visual.patch_embed.proj) is nn.Conv3d
    assert type(switched.model.visual.patch_embed.proj) is PatchConv3d
    assert [n for n, m in switched.named_modules() if isinstance(m, PatchConv3d)] == ["model.visual.patch_embed.proj"]
    assert plain.state_dict().keys() == switched.state_dict().keys()


def test_vision_features_and_gradients_equal_the_convolutions(tiny_checkpoint, cache_dir):
    plain, switched = _tiny_pair(tiny_checkpoint, cache_dir)
    torch.manual_seed(0)
    # two images of 8x12 patches (4x6 after the 2x2 merge), as the processor lays out its pixel rows
    grid = torch.tensor([[1, 8, 12], [1, 8, 12]])
    pixels = torch.randn(int(grid.prod(dim=1).sum()), 3 * 2 * 14 * 14)
    outputs = []
    for model in (plain, switched):
        model.zero_grad()
        features = model.model.get_image_features(pixels, grid).pooler_output
        features = torch.cat(features) if isinstance(features, (list, tuple)) else features
        features.square().sum().backward()
        outputs.append((features.detach(), model.model.visual.patch_embed.proj.weight.grad.clone()))
    (f_plain, g_plain), (f_switched, g_switched) = outputs
    assert f_plain.shape == (2 * 4 * 6, plain.config.text_config.hidden_size)
    torch.testing.assert_close(f_switched, f_plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_switched, g_plain, rtol=1e-4, atol=1e-5)


def test_saved_checkpoints_load_in_plain_transformers(tiny_checkpoint, cache_dir, tmp_path):
    _, switched = _tiny_pair(tiny_checkpoint, cache_dir)
    with torch.no_grad():
        switched.model.visual.patch_embed.proj.weight.mul_(2)  # as if trained
    switched.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(reloaded.model.visual.patch_embed.proj) is nn.Conv3d
    torch.testing.assert_close(reloaded.model.visual.patch_embed.proj.weight,
                               switched.model.visual.patch_embed.proj.weight, rtol=0, atol=0)


def test_other_shapes_keep_the_convolution():
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 8, kernel_size=(2, 4, 4), stride=(2, 4, 4), bias=True)
    reference = nn.Conv3d(3, 8, kernel_size=(2, 4, 4), stride=(2, 4, 4), bias=True)
    reference.load_state_dict(conv.state_dict())
    assert project_patches_by_matmul(nn.Sequential(conv)) == 1
    one_patch, many = torch.randn(5, 3, 2, 4, 4), torch.randn(2, 3, 4, 8, 12)
    torch.testing.assert_close(conv(one_patch), reference(one_patch), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv(many), reference(many), rtol=0, atol=0)  # larger input: the convolution itself
    assert conv(many).shape == (2, 8, 2, 2, 3)
    # overlapping, padded or grouped convolutions are no patch projections
    assert not is_patch_projection(nn.Conv3d(3, 8, kernel_size=2, stride=1))
    assert not is_patch_projection(nn.Conv3d(3, 8, kernel_size=2, stride=2, padding=1))
    assert not is_patch_projection(nn.Conv3d(4, 8, kernel_size=2, stride=2, groups=2))
    assert not is_patch_projection(nn.Conv2d(3, 8, kernel_size=2, stride=2))


def test_llava_has_no_patch_convolution_to_switch(tmp_path):
    folder = build_tiny_llava_checkpoint(str(tmp_path))
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    assert project_patches_by_matmul(model) == 0
