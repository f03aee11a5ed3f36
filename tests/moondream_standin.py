"""Small stand-ins for Moondream2 checkpoints, written as the Hub ships them: ``config.json`` with an
``auto_map``, the modelling code as a ``.py`` file beside it, safetensors weights and a tokenizer
(BPE, trained here on the test questions, with Moondream's ``<|endoftext|>`` as BOS, EOS and pad).

``interface="moondream"`` mirrors revisions up to 2024-08-26: ``Moondream(PreTrainedModel)`` with a
``vision_encoder`` (``encoder`` + ``projection``, taking PIL images), ``region_model`` and a Phi
``text_model`` (transformers' ``PhiForCausalLM``, two layers, without ``generate`` as the
revisions' own Phi class has none under transformers 5). ``interface="hf_moondream"`` mirrors
2025 revisions: ``HfMoondream`` wrapping a ``MoondreamModel`` with ``.vision`` and ``.text``.

Both reproduce what breaks remote code under transformers 5: ``__init__`` never calls
``post_init()`` (so ``from_pretrained`` fails on ``all_tied_weights_keys``), and the vision encoder
keeps its position code in a non-persistent buffer computed in ``__init__`` (left uninitialised by
loading).
"""

from __future__ import annotations

import json
from pathlib import Path

CODE = '''
import math

import numpy as np
import torch
from torch import nn
from transformers import PhiConfig, PhiForCausalLM, PretrainedConfig, PreTrainedModel


class MoondreamConfig(PretrainedConfig):
    model_type = "moondream1"

    def __init__(self, text_config=None, crop=28, patch=14, vision_dim=64, **kwargs):
        self.text_config = text_config or {}
        self.crop, self.patch, self.vision_dim = crop, patch, vision_dim
        super().__init__(**kwargs)


class VisionEncoder(nn.Module):
    """PIL images -> (batch, (crop / patch)^2, text hidden size), like Moondream's own."""

    def __init__(self, config):
        super().__init__()
        self.crop, self.patch = config.crop, config.patch
        tokens = (config.crop // config.patch) ** 2
        self.encoder = nn.Linear(3 * config.patch * config.patch, config.vision_dim)
        self.projection = nn.Sequential(nn.Linear(config.vision_dim, config.text_config["hidden_size"]), nn.GELU())
        angle = torch.arange(tokens, dtype=torch.float32)[:, None] * torch.arange(1, config.vision_dim + 1) / tokens
        self.register_buffer("pos", torch.sin(angle * math.pi) * 0.1, persistent=False)

    def forward(self, images):
        images = images if isinstance(images, (list, tuple)) else [images]
        pixels = [np.asarray(im.convert("RGB").resize((self.crop, self.crop)), dtype=np.float32) / 255.0
                  for im in images]
        x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
        x = x.to(self.encoder.weight.device, self.encoder.weight.dtype)
        b, c, p = x.shape[0], x.shape[1], self.patch
        x = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)
        return self.projection(self.encoder(x) + self.pos.to(x.dtype))


class TextModel(PhiForCausalLM):
    """As the 2024 revisions' own Phi class is under transformers 5: no generate()."""

    @property
    def generate(self):
        raise AttributeError("'PhiForCausalLM' object has no attribute 'generate'")


class RegionModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.coordinate = nn.Linear(config.text_config["hidden_size"], 8)


class Moondream(PreTrainedModel):
    config_class = MoondreamConfig

    def __init__(self, config):
        super().__init__(config)  # no post_init(), as in code written for transformers 4
        self.vision_encoder = VisionEncoder(config)
        self.region_model = RegionModel(config)
        self.text_model = TextModel(PhiConfig(**config.text_config))

    def encode_image(self, image):
        with torch.no_grad():
            return self.vision_encoder(image)


class MoondreamModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.vision = VisionEncoder(config)
        self.text = PhiForCausalLM(PhiConfig(**config.text_config))


class HfMoondream(PreTrainedModel):
    config_class = MoondreamConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = MoondreamModel(config)

    def query(self, image, question):
        raise NotImplementedError
'''


def train_tokenizer(folder: Path, texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    end = "<|endoftext|>"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=420, special_tokens=[end],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=end, eos_token=end, unk_token=end)
    tokenizer.save_pretrained(folder)
    return tokenizer


def write_standin(folder: Path, texts: list[str], interface: str = "moondream", seed: int = 0) -> Path:
    """A stand-in checkpoint in ``folder``; ``texts`` train its tokenizer."""
    import importlib.util
    import sys

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "moondream.py").write_text(CODE)
    tokenizer = train_tokenizer(folder, texts)
    end = tokenizer.eos_token_id
    text_config = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=128, bos_token_id=end, eos_token_id=end,
                       pad_token_id=end)
    spec = importlib.util.spec_from_file_location(f"standin_{interface}_{seed}", folder / "moondream.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    config = module.MoondreamConfig(text_config=text_config)
    name = "Moondream" if interface == "moondream" else "HfMoondream"
    config.auto_map = {"AutoConfig": "moondream.MoondreamConfig", "AutoModelForCausalLM": f"moondream.{name}"}
    cls = getattr(module, name)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(config)
        model.post_init()  # transformers 5's save_pretrained needs it too (it may draw initial weights)
    model.save_pretrained(folder)
    (folder / "moondream.py").write_text(CODE)  # save_pretrained copies code only for auto classes
    saved = json.loads((folder / "config.json").read_text())
    saved["auto_map"] = config.auto_map
    (folder / "config.json").write_text(json.dumps(saved, indent=2))
    return folder
