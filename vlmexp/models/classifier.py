"""A VLM as a classifier: the backbone's pooled last hidden states feed a small MLP head.

The language-model head is never computed: features come from the backbone's base model
(``model.base_model``, e.g. ``Qwen2_5_VLModel``), which returns the last hidden states.

A saved classifier is a folder: ``head.safetensors`` (the head's weights), ``head_config.json`` (the
backbone's id or path and loading settings, the head's sizes, pooling and class names) and, when
training changed the backbone, its LoRA adapter (``adapter/``) or its weights (``backbone/``), all in
safetensors. :func:`load_classifier` reads it back::

    clf = load_classifier("path/to/checkpoint")
    clf.predict(image, "Is there smoke?")                     # -> 0 or 1
    clf.predict(image, "Is there smoke?", return_probs=True)  # -> [p0, p1]

This module imports torch; tasks and configs import it only when a model is built.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from vlmexp.atomic import fsync_dir, fsync_tree
from vlmexp.errors import ConfigError
from vlmexp.messages import ChatRequest
from vlmexp.models.adapters import ModelAdapter, model_adapter
from vlmexp.models.classifier_spec import HeadConfig, classification_request

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head_config.json"
FORMAT_VERSION = 1
_BACKBONE_KEYS = ("name", "revision", "trust_remote_code", "min_pixels", "max_pixels", "dtype", "adapter")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, tokens, hidden) -> (batch, hidden): mean over the real tokens, or the last real token
    (found from the mask, so either padding side works)."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (positions * attention_mask.to(positions.dtype)).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def unwrap_peft(model):
    """The transformers model inside a peft wrapper (its LoRA layers stay in place), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class VLMClassifier(nn.Module):
    """Backbone plus head. ``forward(**processor_outputs)`` or ``forward(features=...)`` (pooled
    features computed earlier, for training the head on a frozen backbone) returns the logits."""

    def __init__(self, backbone, head: HeadConfig, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.hidden_size = int(backbone.config.get_text_config().hidden_size)
        self.pooling = head.pooling
        self.head = nn.Sequential(nn.Linear(self.hidden_size, head.hidden_dim), nn.ReLU(), nn.Dropout(head.dropout),
                                  nn.Linear(head.hidden_dim, num_classes))

    def base_model(self):
        base = unwrap_peft(self.backbone).base_model
        if base is unwrap_peft(self.backbone):
            raise ConfigError(f"{type(base).__name__}: no base model without the language-model head to take "
                              "hidden states from")
        return base

    def features(self, **inputs) -> torch.Tensor:
        out = self.base_model()(**inputs, use_cache=False, return_dict=True)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            raise ConfigError(f"{type(self.base_model()).__name__} returns no last_hidden_state")
        return pool(hidden, inputs["attention_mask"], self.pooling)

    def forward(self, features: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        if features is None:
            features = self.features(**inputs)
        weight = self.head[0].weight
        return self.head(features.to(weight.device, weight.dtype))


def encode(processor, requests: Sequence[ChatRequest], adapter: ModelAdapter | None = None):
    """Processor inputs for a batch of requests, rendered by the model's adapter, right-padded."""
    return (adapter or model_adapter(None)).encode(processor, requests, padding_side="right")


class Classifier:
    """A loaded backbone with its head, ready to predict; also what the evaluation engine serves."""

    def __init__(self, module: VLMClassifier, processor, class_names: Sequence[str], backbone: Mapping,
                 adapter: ModelAdapter | None = None):
        self.module = module
        self.processor = processor
        self.class_names = list(class_names)
        self.backbone = dict(backbone)  # id/path and loading settings, saved beside the head
        self.adapter = adapter or model_adapter(None)

    @property
    def device(self):
        return self.module.head[0].weight.device

    def logits(self, requests: Sequence[ChatRequest]) -> torch.Tensor:
        self.module.eval()
        inputs = encode(self.processor, requests, self.adapter).to(self.module.backbone.device)
        with torch.inference_mode():
            return self.module(**inputs).float().cpu()

    def log_probs(self, requests: Sequence[ChatRequest]) -> torch.Tensor:
        """(len(requests), classes) log-probabilities, one forward pass."""
        return torch.log_softmax(self.logits(requests), dim=-1)

    def predict(self, image, text: str, return_probs: bool = False):
        """The class index for one (image, text) pair, or with ``return_probs`` the list of class
        probabilities. ``image``: a PIL image or a path."""
        return self.predict_batch([image], [text], return_probs=return_probs)[0]

    def predict_batch(self, images: Sequence, texts: Sequence[str], return_probs: bool = False,
                      batch_size: int = 8) -> list:
        from vlmexp.data.images import open_image

        out: list = []
        for start in range(0, len(images), batch_size):
            requests = [classification_request(open_image(img) if isinstance(img, (str, Path)) else img, text)
                        for img, text in zip(images[start:start + batch_size], texts[start:start + batch_size])]
            probs = torch.softmax(self.logits(requests), dim=-1)
            out += probs.tolist() if return_probs else probs.argmax(dim=-1).tolist()
        return out

    def save(self, folder: str | Path, backbone_changed: bool = False) -> Path:
        """Write the classifier to ``folder`` (replaced if it exists). ``backbone_changed``: training
        updated the backbone's own weights, so they are saved too; a LoRA adapter on an unchanged
        backbone is saved alone."""
        from safetensors.torch import save_file

        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        backbone = self.module.backbone
        weights = None
        if hasattr(backbone, "peft_config") and backbone_changed:
            backbone = self.module.backbone = backbone.merge_and_unload()
        if hasattr(backbone, "peft_config"):
            backbone.save_pretrained(tmp / "adapter")
            weights = "adapter"
        elif backbone_changed:
            backbone.save_pretrained(tmp / "backbone")
            self.processor.save_pretrained(tmp / "backbone")
            weights = "backbone"
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.head.state_dict().items()}
        save_file(state, str(tmp / HEAD_WEIGHTS))
        head = HeadConfig(hidden_dim=self.module.head[0].out_features, dropout=self.module.head[2].p,
                          pooling=self.module.pooling)
        config = {"format": FORMAT_VERSION, "backbone": self.backbone, "backbone_weights": weights,
                  "hidden_size": self.module.hidden_size, "head": head.to_dict(), "class_names": self.class_names}
        (tmp / HEAD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        fsync_tree(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        fsync_dir(folder.parent)
        return folder


def backbone_spec(model_cfg, checkpoint: str) -> dict:
    """What loading the backbone again needs: the resolved id or path plus the model config's settings."""
    from omegaconf import OmegaConf

    spec = {key: model_cfg.get(key) for key in _BACKBONE_KEYS}
    if spec["adapter"] is not None:
        spec["adapter"] = OmegaConf.to_container(spec["adapter"], resolve=True)
    spec["checkpoint"] = checkpoint
    return spec


def read_head_config(folder: str | Path) -> dict:
    path = Path(folder) / HEAD_CONFIG
    if not path.is_file():
        raise ConfigError(f"{folder}: not a saved classifier (no {HEAD_CONFIG})")
    return json.loads(path.read_text())


def load_classifier(folder: str | Path, device: str = "auto", precision: str = "auto",
                    attn_implementation: str = "auto") -> Classifier:
    """Load the backbone a saved classifier names, with its adapter or weights, and the head."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from vlmexp.hardware import resolve_placement

    folder = Path(folder)
    config = read_head_config(folder)
    spec = config["backbone"]
    model_cfg = OmegaConf.create({k: spec.get(k) for k in _BACKBONE_KEYS})
    hardware = OmegaConf.create(dict(device=device, precision=precision, attn_implementation=attn_implementation,
                                     quantization=None))
    placement = resolve_placement(hardware, model_cfg)
    source = str(folder / "backbone") if config["backbone_weights"] == "backbone" else spec["checkpoint"]
    adapter = model_adapter(model_cfg)
    processor = adapter.load_processor(source, model_cfg)
    backbone = adapter.load_model(source, model_cfg, placement)
    if config["backbone_weights"] == "adapter":
        from peft import PeftModel

        backbone = PeftModel.from_pretrained(backbone, str(folder / "adapter"))
    module = VLMClassifier(backbone, HeadConfig(**config["head"]), len(config["class_names"]))
    module.head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
    module.head.to(backbone.device)
    module.eval()
    return Classifier(module, processor, config["class_names"], spec, adapter)
