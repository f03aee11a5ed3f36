"""An engine plugin for out-of-memory tests: the real HF engine on a pretend small GPU."""

from __future__ import annotations

from vlmexp.engines.hf import HFEngine


class MemoryCappedHFEngine(HFEngine):
    """The real in-process engine on a device that holds at most ``max_rows`` rows per forward pass
    of the model config named ``capped_model``: a bigger pass raises ``torch.OutOfMemoryError``, as
    CUDA does. With ``fail_loading`` that model already runs out of memory while loading. Models
    loaded under other names (the fallback) are not capped. ``forward_rows`` records each pass."""

    def __init__(self, max_rows: int = 0, capped_model: str | None = None, fail_loading: bool = False, **kwargs):
        self.max_rows = max_rows
        self.capped_model = capped_model
        self.fail_loading = fail_loading
        self.forward_rows: list[int] = []
        self._hooks: list = []
        super().__init__(**kwargs)

    def _capped(self) -> bool:
        return self.capped_model is None or (self.model_cfg is not None and self.model_cfg.name == self.capped_model)

    def _load(self, model_cfg):
        import torch

        if self.fail_loading and model_cfg.name == self.capped_model:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 14.00 GiB (injected while loading)")
        return super()._load(model_cfg)

    def _use(self, model, processor) -> None:
        super()._use(model, processor)
        if self._capped():
            self._hooks.append(model.register_forward_pre_hook(self._check_rows, with_kwargs=True))

    def _check_rows(self, module, args, kwargs):
        import torch

        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        rows = int(ids.shape[0])
        self.forward_rows.append(rows)
        if rows > self.max_rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({rows} rows, "
                                         f"injected above {self.max_rows})")

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        super().close()
