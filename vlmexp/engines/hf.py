"""In-process Hugging Face transformers engine: batched greedy generation and answer scoring."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from vlmexp.engines.base import Engine
from vlmexp.messages import ChatRequest, Generation, ImagePart, TextPart, VideoPart

log = logging.getLogger(__name__)


def to_hf_conversation(request: ChatRequest) -> list[dict]:
    """Typed messages -> the content-list format of transformers chat templates."""
    conversation = []
    for message in request.messages:
        content: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                content.append({"type": "image"})
            elif isinstance(part, VideoPart):
                content.append({"type": "video"})
        conversation.append({"role": message.role, "content": content})
    return conversation


class HFEngine(Engine):
    """Runs the model in this process. Give either a loaded ``model``/``processor`` pair (after
    fine-tuning) or let it load ``checkpoint`` for the ``model`` config on the resolved placement."""

    supports_scoring = True
    supports_video = True
    trains_in_process = True

    def __init__(self, batch_size: int = 8, max_new_tokens: int = 96, do_sample: bool = False,
                 temperature: float = 1.0, *, run=None, model=None, processor=None):
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature = temperature
        if model is None:
            from vlmexp.models.loading import load_model, load_processor, resolve_checkpoint

            checkpoint = run.checkpoint or resolve_checkpoint(run.cfg.model)
            processor = load_processor(checkpoint, run.cfg.model)
            model = load_model(checkpoint, run.cfg.model, run.placement)
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._generate_seconds = 0.0

    # -- inputs -------------------------------------------------------------------------------
    def _prompt_text(self, request: ChatRequest) -> str:
        return self.processor.apply_chat_template(to_hf_conversation(request), add_generation_prompt=True,
                                                  tokenize=False)

    def _encode(self, texts: list[str], requests: Sequence[ChatRequest], padding_side: str):
        images = [img for r in requests for img in r.images]
        videos = [v.frames for r in requests for v in r.videos]
        kwargs: dict[str, Any] = dict(text=texts, return_tensors="pt", padding=True, padding_side=padding_side)
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = videos
            kwargs["do_sample_frames"] = False
        return self.processor(**kwargs).to(self.model.device)

    def _sent_sizes(self, inputs, requests: Sequence[ChatRequest]) -> list[list[tuple[int, int]]]:
        """Per request, the (width, height) of each image after the processor's resizing."""
        grids = inputs.get("image_grid_thw")
        patch = getattr(getattr(self.processor, "image_processor", None), "patch_size", None)
        sizes, k = [], 0
        for request in requests:
            own = []
            for image in request.images:
                if grids is not None and patch:
                    _, h, w = (int(x) for x in grids[k])
                    own.append((w * patch, h * patch))
                else:
                    own.append(tuple(image.size))
                k += 1
            sizes.append(own)
        return sizes

    # -- protocol -----------------------------------------------------------------------------
    def preferred_batch_size(self) -> int:
        return self.batch_size

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        import torch

        results: list[Generation] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = list(requests[start:start + self.batch_size])
            inputs = self._encode([self._prompt_text(r) for r in chunk], chunk, padding_side="left")
            max_new = max(r.max_new_tokens or self.max_new_tokens for r in chunk)
            began = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=max_new, do_sample=self.do_sample,
                                          temperature=self.temperature if self.do_sample else None,
                                          top_p=None, top_k=None,
                                          pad_token_id=self.tokenizer.pad_token_id)
            elapsed = time.perf_counter() - began
            prompt_len = inputs["input_ids"].shape[1]
            new_tokens = out[:, prompt_len:]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            counts = [self._count_generated(row) for row in new_tokens]
            prompt_counts = inputs["attention_mask"].sum(dim=1).tolist()
            sizes = self._sent_sizes(inputs, chunk)
            for text, n_out, n_in, size in zip(texts, counts, prompt_counts, sizes):
                results.append(Generation(text=text.strip(), latency_s=elapsed / len(chunk),
                                          prompt_tokens=int(n_in), completion_tokens=n_out, image_sizes=size))
            self._prompt_tokens += int(sum(prompt_counts))
            self._completion_tokens += sum(counts)
            self._generate_seconds += elapsed
        return results

    def _count_generated(self, row) -> int:
        stop = {self.tokenizer.pad_token_id, *self._eos_ids()}
        n = 0
        for tok in row.tolist():
            n += 1
            if tok in stop:
                break
        return n

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []

    def score(self, requests: Sequence[ChatRequest], candidates: Sequence[str]) -> list[list[float]]:
        """Sum of log-probabilities of each candidate's tokens, end-of-turn token included, given the
        prompt: one forward pass per batch over every (request, candidate) pair."""
        import torch

        eos = self.tokenizer.eos_token or ""
        scores: list[list[float]] = []
        per_chunk = max(1, self.batch_size // max(1, len(candidates)))
        for start in range(0, len(requests), per_chunk):
            chunk = list(requests[start:start + per_chunk])
            prompts = [self._prompt_text(r) for r in chunk]
            pairs = [(r, p, c) for r, p in zip(chunk, prompts) for c in candidates]
            prompt_lens = [len(self._encode([p], [r], "right")["input_ids"][0]) for r, p in zip(chunk, prompts)]
            inputs = self._encode([p + c + eos for _, p, c in pairs], [r for r, _, _ in pairs], "right")
            began = time.perf_counter()
            with torch.inference_mode():
                logits = self.model(**inputs).logits.float()
            self._generate_seconds += time.perf_counter() - began
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = inputs["input_ids"][:, 1:]
            token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
            for i in range(len(chunk)):
                row = []
                for j in range(len(candidates)):
                    k = i * len(candidates) + j
                    # positions predicting the candidate tokens: prompt_len-1 .. length-2
                    row.append(float(token_lp[k, prompt_lens[i] - 1:int(lengths[k]) - 1].sum()))
                scores.append(row)
        return scores

    def run_metrics(self) -> dict[str, float]:
        metrics = {"prompt_tokens_total": float(self._prompt_tokens),
                   "completion_tokens_total": float(self._completion_tokens)}
        if self._generate_seconds > 0:
            metrics["tokens_per_s"] = self._completion_tokens / self._generate_seconds
        return metrics

    def close(self) -> None:
        self.model = None
