"""``captioner=blip``: transformers' BLIP / BLIP-2 captioning models (``Salesforce/blip-image-captioning-
large``, ``Salesforce/blip2-opt-2.7b``) describe each object from a crop around its box, widened by
``context`` times the box's size on each side so the surroundings are in view. The class's prompt (from
``prompts``, else ``default_prompt``) starts the caption (BLIP's conditional captioning), so captions read
"a picture of a glass on the grass". Runs beside the run's engine, which it does not use (pair it with
``engine=none`` so no VLM is loaded)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from vlmexp.detectors.base import Detection, DetectorError, resolve_device
from vlmexp.messages import Generation


class BlipCaptioner:
    def __init__(self, model: str, processor: str | None = None,
                 model_class: str = "transformers.BlipForConditionalGeneration", prompts: dict | None = None,
                 default_prompt: str = "a picture of a {label}", context: float = 0.5, max_new_tokens: int = 30,
                 batch_size: int = 16, device: str | None = None, *, run=None):
        from hydra.utils import get_class
        from transformers import AutoProcessor

        self.prompts, self.default_prompt = dict(prompts or {}), default_prompt
        self.context, self.max_new_tokens, self.batch_size = context, max_new_tokens, batch_size
        self.device = resolve_device(device, run)
        try:
            source = str(Path(model).expanduser()) if Path(model).expanduser().exists() else model
            self.processor = AutoProcessor.from_pretrained(processor or source)
            self.model = get_class(model_class).from_pretrained(source).to(self.device).eval()
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DetectorError(f"captioner.model={model}: cannot load a captioning model ({reason})") from None

    def prompt(self, label: str) -> str:
        return self.prompts.get(label, self.default_prompt).format(label=label)

    def crop(self, image, box: Sequence[float]):
        """The box widened by ``context`` times its width and height on each side, within the image."""
        x1, y1, x2, y2 = box
        dx, dy = (x2 - x1) * self.context, (y2 - y1) * self.context
        w, h = image.size
        left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
        right, bottom = min(w, max(left + 1, round(x2 + dx))), min(h, max(top + 1, round(y2 + dy)))
        return image.crop((left, top, right, bottom))

    def caption(self, engine, images: Sequence, detections: Sequence[list[Detection]]) -> list[list[Generation]]:
        """One caption per object. Objects are batched by prompt (prompts of one length need no padding)."""
        import torch

        jobs = [(i, k, self.crop(img, d.box), self.prompt(d.label))
                for i, (img, found) in enumerate(zip(images, detections)) for k, d in enumerate(found)]
        texts: dict[tuple[int, int], Generation] = {}
        for prompt in sorted({job[3] for job in jobs}):
            group = [job for job in jobs if job[3] == prompt]
            for start in range(0, len(group), max(1, self.batch_size)):
                batch = group[start:start + self.batch_size]
                began = time.perf_counter()
                inputs = self.processor(images=[job[2] for job in batch], text=[prompt] * len(batch),
                                        return_tensors="pt").to(self.device)
                with torch.inference_mode():
                    out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
                decoded = self.processor.batch_decode(out, skip_special_tokens=True)
                latency = (time.perf_counter() - began) / len(batch)
                for job, text in zip(batch, decoded):
                    texts[job[0], job[1]] = Generation(text.strip(), latency_s=latency)
        return [[texts[i, k] for k in range(len(found))] for i, found in enumerate(detections)]
