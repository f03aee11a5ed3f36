"""In-process Hugging Face transformers engine: batched greedy generation and answer scoring.

On CUDA out-of-memory the engine halves its batch and retries the same requests; at one request
per batch it switches to ``model.fallback`` (a smaller model config), logging the switch and
recording it as run tags. It never changes model silently, and never when it was handed a
fine-tuned model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from vlmexp.engines.base import Engine
from vlmexp.errors import EngineError
from vlmexp.hardware import resolve_placement
from vlmexp.messages import ChatRequest, Generation
from vlmexp.models.adapters import model_adapter
from vlmexp.models.configs import model_config
from vlmexp.models.loading import resolve_checkpoint

log = logging.getLogger(__name__)


class HFEngine(Engine):
    """Runs the model in this process. Give either a loaded ``model``/``processor`` pair (after
    fine-tuning; ``adapter``, when given, is its family's adapter, else the run's model config
    names it) or let it load ``checkpoint`` for the ``model`` config on the resolved placement."""

    supports_scoring = True
    supports_video = True
    trains_in_process = True

    def __init__(self, batch_size: int = 8, max_new_tokens: int = 96, do_sample: bool = False,
                 temperature: float = 1.0, *, run=None, model=None, processor=None, adapter=None):
        self.batch_size = batch_size
        self._configured_batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature = temperature
        self.run = run
        self.model_cfg = run.cfg.model if run is not None else None
        # Switching model is only right for a model loaded from its config, not a fine-tuned one.
        self._may_switch_model = model is None and run is not None and not run.checkpoint
        self._models_tried: list[str] = []
        self._oom_retries = 0
        self._answered = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._generate_seconds = 0.0
        # the processor is not safe to call from two threads at once (its tokenizer's padding state)
        self._encode_lock = threading.Lock()
        self._prepared: deque[dict] = deque(maxlen=2)  # of prepare(): {request ids: (requests, inputs)}
        self._candidate_cache: dict[tuple[str, tuple[str, ...]], list[list[int]]] = {}
        self.adapter = adapter or model_adapter(self.model_cfg)
        self.supports_scoring = self.adapter.supports_scoring
        if model is None:
            if self._may_switch_model and self.model_cfg.get("fallback"):
                model_config(self.model_cfg.fallback, run.cfg)  # a bad name fails now, not after an OOM
            self._load_first_that_fits()
        else:
            self._use(model, processor)

    # -- model loading and memory ---------------------------------------------------------------
    def _use(self, model, processor) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)

    def _load(self, model_cfg) -> tuple[object, object]:
        """Processor and model for ``model_cfg`` on the run's hardware, through its adapter."""
        checkpoint = self.run.checkpoint or resolve_checkpoint(model_cfg)
        placement = (self.run.placement if model_cfg is self.run.cfg.model
                     else resolve_placement(self.run.cfg.hardware, model_cfg))
        self.adapter = model_adapter(model_cfg)
        processor = self.adapter.load_processor(checkpoint, model_cfg)
        return self.adapter.load_model(checkpoint, model_cfg, placement), processor

    def _load_first_that_fits(self) -> None:
        """Load ``model_cfg``; on out-of-memory while loading, go down the fallback chain."""
        import torch

        while True:
            self._models_tried.append(self.model_cfg.name)
            try:
                self._use(*self._load(self.model_cfg))
                return
            except torch.OutOfMemoryError as exc:
                failure = _first_line(exc)
            self.model = None
            _free_memory()
            self._next_model(f"CUDA out of memory while loading ({failure})")

    def _next_model(self, reason: str) -> None:
        """Make ``model.fallback`` the current model config and record the switch; EngineError if
        there is none to switch to."""
        current = self._model_label()
        name = self.model_cfg.get("fallback") if self._may_switch_model else None
        if not name:
            why = ("no model.fallback is set" if self._may_switch_model else
                   "the engine was handed a loaded (fine-tuned) model, which it does not replace")
            raise EngineError(f"{current}{reason}, and {why}; try a smaller model, hardware.quantization=4 "
                              "or a lower model.max_pixels")
        if name in self._models_tried:
            raise EngineError(f"{current}{reason}; model.fallback={name} was already tried "
                              f"({' -> '.join(self._models_tried)})")
        self._oom_retries += 1
        self.model_cfg = model_config(name, self.run.cfg)
        chain = " -> ".join([*self._models_tried, name])
        log.warning("%s%s; switching to model.fallback=%s (after %d answered requests)", current, reason, name,
                    self._answered)
        self.run.tracker.set_tags({"vlmexp.model_fallback": chain, "vlmexp.model_fallback_reason": reason,
                                   "vlmexp.model_fallback_after_requests": str(self._answered),
                                   "vlmexp.model_used": name})
        self.batch_size = self._configured_batch_size

    def _model_label(self) -> str:
        return f"model={self.model_cfg.name}: " if self.model_cfg is not None else ""

    def _switch_model(self, reason: str) -> None:
        self._next_model(reason)  # raises when there is nothing to switch to
        self.model = None
        _free_memory()
        self._load_first_that_fits()

    def _in_batches(self, requests: Sequence[ChatRequest], rows_per_request: int, step) -> list:
        """``step(chunk)`` over consecutive chunks of ``batch_size // rows_per_request`` requests. On
        out-of-memory the same chunk is retried at half the size; a single request that does not fit
        switches to the fallback model."""
        import torch

        results: list = []
        start = 0
        while start < len(requests):
            chunk = list(requests[start:start + max(1, self.batch_size // rows_per_request)])
            try:
                results.extend(step(chunk))
            except torch.OutOfMemoryError as exc:
                failure = _first_line(exc)  # handled outside the except block, so its tensors are freed
            else:
                self._answered += len(chunk)
                start += len(chunk)
                continue
            _free_memory()
            if len(chunk) > 1:
                self._oom_retries += 1
                self.batch_size = max(1, len(chunk) // 2 * rows_per_request)
                log.warning("%sCUDA out of memory with %d requests per batch; retrying them %d at a time",
                            self._model_label(), len(chunk), len(chunk) // 2)
            else:
                self._switch_model(f"CUDA out of memory at batch size 1 ({failure})")
        return results

    # -- inputs -------------------------------------------------------------------------------
    def _prompt_text(self, request: ChatRequest) -> str:
        return self.adapter.prompt_text(self.processor, request)

    def _encode(self, texts: list[str], requests: Sequence[ChatRequest], padding_side: str):
        with self._encode_lock:
            inputs = self.adapter.encode(self.processor, requests, padding_side=padding_side, texts=texts)
        return inputs.to(self.model.device)

    def _chunks(self, requests: Sequence[ChatRequest]) -> tuple[list[int], list[list[ChatRequest]]]:
        """The order requests are run in (by prompt length: less padding), and the batches cut from it."""
        from vlmexp.engines.pipeline import by_prompt_length

        order = by_prompt_length(requests)
        ordered = [requests[i] for i in order]
        size = max(1, self.batch_size)
        return order, [ordered[k:k + size] for k in range(0, len(ordered), size)]

    def prepare(self, requests: Sequence[ChatRequest]) -> None:
        """Encode ``requests`` now, in the calling thread, cut into the batches ``generate`` and
        ``score`` will run; they take these inputs instead of encoding again. The evaluation loop
        calls it for the next batch while the model answers the current one."""
        if not self._encode_in_background():
            return
        _, chunks = self._chunks(requests)
        self._prepared.append({tuple(map(id, chunk)): (chunk, self._encode_requests(chunk)) for chunk in chunks})

    # -- protocol -----------------------------------------------------------------------------
    def preferred_batch_size(self) -> int:
        return self.batch_size

    @classmethod
    def identify(cls, run) -> dict[str, str]:
        """The checkpoint's Hub commit or file hash (see :func:`vlmexp.models.identity.checkpoint_identity`)."""
        from vlmexp.models.identity import checkpoint_identity
        from vlmexp.models.loading import resolve_checkpoint

        model_cfg = run.cfg.model
        return checkpoint_identity(run.checkpoint or resolve_checkpoint(model_cfg), model_cfg.get("revision"))

    def model_identity(self) -> dict[str, str]:
        if self.run is None:
            return {}
        from vlmexp.models.identity import checkpoint_identity
        from vlmexp.models.loading import resolve_checkpoint

        return checkpoint_identity(self.run.checkpoint or resolve_checkpoint(self.model_cfg),
                                   self.model_cfg.get("revision"))

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        """Answers in the order of ``requests``. They are batched by prompt length (less padding), and
        the next batch is encoded (processor: image resizing, tokenising) in a background thread while
        the model generates the current one."""
        from vlmexp.engines.pipeline import EncodeAhead

        order, chunks = self._chunks(requests)
        ordered = [r for chunk in chunks for r in chunk]
        with EncodeAhead(ordered, self._encode_requests, self._encode_in_background()) as ahead:
            answers = self._in_batches(ordered, 1, lambda chunk: self._generate_chunk(chunk, ahead.take(chunk)))
        return _in_request_order(order, answers)

    def _encode_in_background(self) -> bool:
        """Whether encoding in another thread overlaps the model: not for one request at a time on
        the CPU, where the model's steps are as bound by the interpreter as the processor is (the
        two threads only take turns; measured slower than encoding on the spot)."""
        return self.batch_size > 1 or self.model.device.type != "cpu"

    def _encode_requests(self, chunk: Sequence[ChatRequest]):
        key = tuple(map(id, chunk))
        for prepared in list(self._prepared):
            found = prepared.pop(key, None)  # the entry holds the requests: their ids are not reused
            if found is not None and all(a is b for a, b in zip(found[0], chunk)):
                return found[1]
        return self._encode([self._prompt_text(r) for r in chunk], chunk, padding_side="left")

    def _generate_chunk(self, chunk: list[ChatRequest], inputs=None) -> list[Generation]:
        import torch

        inputs = inputs if inputs is not None else self._encode_requests(chunk)
        max_new = max(r.max_new_tokens or self.max_new_tokens for r in chunk)
        began = time.perf_counter()
        with torch.inference_mode():
            extra = {}
            if self.adapter.generates_from_cache:  # the prompts' shared start run once (engines.prefix)
                from vlmexp.engines.prefix import generation_cache

                if (cache := generation_cache(self.adapter, self.model, inputs)) is not None:
                    extra["cache"] = cache
            out = self.adapter.generate(self.model, inputs, max_new_tokens=max_new, do_sample=self.do_sample,
                                        temperature=self.temperature if self.do_sample else None,
                                        top_p=None, top_k=None, pad_token_id=self.tokenizer.pad_token_id, **extra)
        elapsed = time.perf_counter() - began
        prompt_len = inputs["input_ids"].shape[1]
        new_tokens = out[:, prompt_len:]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        counts = [self._count_generated(row) for row in new_tokens]
        stop = {self.tokenizer.pad_token_id, *self._eos_ids()}
        # cut off: no end token within the request's own cap
        truncated = [not stop & set(row[:r.max_new_tokens or self.max_new_tokens].tolist())
                     for row, r in zip(new_tokens, chunk)]
        prompt_counts = inputs["attention_mask"].sum(dim=1).tolist()
        sizes = self.adapter.image_sizes(self.processor, inputs, chunk)
        results = [Generation(text=text.strip(), latency_s=elapsed / len(chunk), prompt_tokens=int(n_in),
                              completion_tokens=n_out, image_sizes=size, truncated=cut)
                   for text, n_out, n_in, size, cut in zip(texts, counts, prompt_counts, sizes, truncated)]
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
        # remote-code models (Moondream) may have no generation config of their own
        config = getattr(self.model, "generation_config", None)
        eos = config.eos_token_id if config is not None else self.tokenizer.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []

    def score(self, requests: Sequence[ChatRequest], candidates: Sequence[str]) -> list[list[float]]:
        """Sum of log-probabilities of each candidate's tokens, end-of-turn token included, given the
        prompt: one forward pass over each batch of prompts, then the candidates' tokens from the
        prompts' cached keys/values (see :mod:`vlmexp.engines.scoring`); the next batch's prompts are
        encoded in a background thread meanwhile."""
        if not self.adapter.supports_scoring:
            raise EngineError(f"model={self._model_label()}: engine=hf cannot score candidate answers for this model "
                              "(its adapter builds no aligned logits); use a task setting that generates answers")
        if not candidates:
            return [[] for _ in requests]
        from vlmexp.engines.pipeline import EncodeAhead

        order, chunks = self._chunks(requests)
        ordered = [r for chunk in chunks for r in chunk]
        with EncodeAhead(ordered, self._encode_requests, self._encode_in_background()) as ahead:
            scores = self._in_batches(ordered, 1, lambda chunk: self._score_chunk(chunk, candidates, ahead))
        return _in_request_order(order, scores)

    def _score_chunk(self, chunk: list[ChatRequest], candidates: Sequence[str], ahead=None) -> list[list[float]]:
        import torch

        from vlmexp.engines.scoring import score_cached

        prompts = [self._prompt_text(r) for r in chunk]
        token_ids = self._candidate_ids(prompts, candidates)
        if token_ids is None:  # a candidate merges into the prompt's last token: score whole texts
            return self._score_chunk_whole(chunk, prompts, candidates)
        inputs = ahead.take(chunk) if ahead is not None else self._encode(prompts, chunk, "left")
        began = time.perf_counter()
        with torch.inference_mode():
            scores = score_cached(self.adapter, self.model, inputs, token_ids, self.tokenizer.pad_token_id)
        self._generate_seconds += time.perf_counter() - began
        return scores

    def _candidate_ids(self, prompts: list[str], candidates: Sequence[str]) -> list[list[list[int]]] | None:
        """:func:`~vlmexp.engines.scoring.candidate_token_ids`, tokenising each distinct prompt once
        per candidate set (a task's prompts mostly differ only in their images, not their text)."""
        from vlmexp.engines.scoring import candidate_token_ids

        key = tuple(candidates)
        missing = [p for p in dict.fromkeys(prompts) if (p, key) not in self._candidate_cache]
        if missing:
            with self._encode_lock:
                found = candidate_token_ids(self.tokenizer, missing, candidates, self.tokenizer.eos_token or "")
            if found is None:
                return None
            if len(self._candidate_cache) > 4096:
                self._candidate_cache.clear()
            self._candidate_cache.update({(p, key): ids for p, ids in zip(missing, found)})
        return [self._candidate_cache[(p, key)] for p in prompts]

    def _score_chunk_whole(self, chunk: list[ChatRequest], prompts: list[str],
                           candidates: Sequence[str]) -> list[list[float]]:
        """Every (request, candidate) text through the model in full: for tokenizers that merge a
        candidate's first characters into the end of the prompt."""
        import torch

        eos = self.tokenizer.eos_token or ""
        pairs = [(r, p, c) for r, p in zip(chunk, prompts) for c in candidates]
        prompt_lens = [len(self._encode([p], [r], "right")["input_ids"][0]) for r, p in zip(chunk, prompts)]
        inputs = self._encode([p + c + eos for _, p, c in pairs], [r for r, _, _ in pairs], "right")
        began = time.perf_counter()
        with torch.inference_mode():
            logits = self.adapter.forward(self.model, inputs).logits.float()
        self._generate_seconds += time.perf_counter() - began
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = inputs["input_ids"][:, 1:]
        token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        scores: list[list[float]] = []
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
                   "completion_tokens_total": float(self._completion_tokens), "oom_retries": float(self._oom_retries)}
        if self._generate_seconds > 0 and self._completion_tokens:
            metrics["tokens_per_s"] = self._completion_tokens / self._generate_seconds
        return metrics

    def close(self) -> None:
        self.model = None


def _in_request_order(order: list[int], results: list) -> list:
    """``results`` of the requests taken in ``order``, back in the requests' own order."""
    out: list = [None] * len(results)
    for position, index in enumerate(order):
        out[index] = results[position]
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
