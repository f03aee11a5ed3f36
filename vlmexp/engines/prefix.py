"""The start all prompts of a batch share, run once.

A task's prompts mostly share their system prompt and the text before the image: in a batch without
padding (requests are batched by prompt length), those tokens go through the model for one row and
their keys/values are repeated for every row, so only the rest of each prompt (image included) runs
per row. Scoring continues from that cache with its own forward pass; generation hands it to
``generate``, which runs the uncached rest (Qwen2-VL-family models compute their multimodal positions
for it themselves).
"""

from __future__ import annotations


def shared_prefix_length(model, inputs, minimum: int = 16) -> int:
    """How many leading tokens all prompts of the batch have in common, none of them padding or an
    image/video placeholder (whose embeddings differ per row); 0 when under ``minimum`` or the batch
    has one row."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if ids.shape[0] < 2 or not bool(mask.all()):
        return 0
    same = (ids == ids[:1]).all(dim=0)
    types = inputs.get("mm_token_type_ids")
    if types is not None:
        same &= (types == 0).all(dim=0)
    config = model.config
    for key in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
        token = getattr(config, key, None)
        if isinstance(token, int):
            same &= ids[0] != token
    length = min(int(same.long().cumprod(dim=0).sum()), ids.shape[1] - 1)
    return length if length >= minimum else 0


def _positions(model, inputs):
    """Multimodal-rope models' (Qwen2-VL family) position ids of the whole prompts; None for others,
    whose positions simply continue after the cache."""
    inner = getattr(model, "model", None)
    if not hasattr(inner, "compute_3d_position_ids"):
        return None
    return inner.compute_3d_position_ids(
        input_ids=inputs["input_ids"], image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"), second_per_grid_ts=inputs.get("second_per_grid_ts"),
        inputs_embeds=None, attention_mask=inputs["attention_mask"], cache=None,
        mm_token_type_ids=inputs.get("mm_token_type_ids"))


def shared_prefix_cache(adapter, model, inputs, shared: int, positions=None):
    """The key/value cache of the first ``shared`` tokens (the same in every row), run for one row and
    repeated for every row of the batch."""
    head = {"input_ids": inputs["input_ids"][:1, :shared], "attention_mask": inputs["attention_mask"][:1, :shared],
            "use_cache": True, "logits_to_keep": 1}
    if positions is not None:
        head["position_ids"] = positions[:, :1, :shared]
    cache = output_cache(adapter.forward(model, head))
    cache.batch_repeat_interleave(inputs["input_ids"].shape[0])
    return cache


def generation_cache(adapter, model, inputs):
    """For ``generate(**inputs, cache=...)``: the shared start's cache, or None when there is none."""
    shared = shared_prefix_length(model, inputs)
    return shared_prefix_cache(adapter, model, inputs, shared, _positions(model, inputs)) if shared else None


def prefill(adapter, model, inputs):
    """The prompts' forward pass with its key/value cache and the last position's logits, the shared
    start run once (:func:`shared_prefix_length`) and the rest of each prompt on its cache."""
    shared = shared_prefix_length(model, inputs)
    if not shared:
        return adapter.forward(model, {**inputs, "use_cache": True, "logits_to_keep": 1})
    ids = inputs["input_ids"]
    positions = _positions(model, inputs)
    cache = shared_prefix_cache(adapter, model, inputs, shared, positions)
    per_token = [key for key, value in inputs.items() if getattr(value, "shape", None) == ids.shape
                 and key != "attention_mask" and not key.startswith("pixel_values")]
    rest = {**inputs, **{key: inputs[key][:, shared:] for key in per_token}}
    rest.update(cache=cache, use_cache=True, logits_to_keep=1)
    if positions is not None:
        rest["position_ids"] = positions[:, :, shared:]
    return adapter.forward(model, rest)


def output_cache(output):
    return output.cache if hasattr(output, "cache") else output.past_key_values
