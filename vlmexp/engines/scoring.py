"""Candidate scoring from one forward pass per prompt.

Each prompt (image included) goes through the model once, with its key/value cache kept (the start
all prompts of a batch share once for the batch: :mod:`vlmexp.engines.prefix`); then only
the candidates' own tokens go through the model on that cache, one candidate for all prompts of the
batch at a time. The first token of every candidate is read from the prompt's next-token
distribution, so a one-token candidate (plus its end token) costs a single extra position.

Prompts are left-padded, so every prompt ends at the same column and the candidates' tokens follow it
directly; candidates are right-padded, and padding after a candidate's last token changes nothing
before it.
"""

from __future__ import annotations

from collections.abc import Sequence


def candidate_token_ids(tokenizer, prompts: Sequence[str], candidates: Sequence[str],
                        end: str) -> list[list[list[int]]] | None:
    """Per prompt, per candidate: the ids ``prompt + candidate + end`` has after the prompt's own ids,
    i.e. exactly the tokens scoring the whole text would count. None when some candidate's first
    characters merge into the prompt's last token (then the prompt's ids are not a prefix)."""
    texts = [t for p in prompts for t in (p, *(p + c + end for c in candidates))]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    result, k = [], 0
    for _ in prompts:
        base = ids[k]
        row = []
        for full in ids[k + 1:k + 1 + len(candidates)]:
            if len(full) <= len(base) or full[:len(base)] != base:
                return None
            row.append(full[len(base):])
        result.append(row)
        k += 1 + len(candidates)
    return result


def continuation_position_ids(model, attention_mask, new_tokens: int):
    """Position ids of ``new_tokens`` tokens appended after a cached prefill, or None where the
    model's default (positions continuing after the cache) is right. Multimodal-rope models
    (Qwen2-VL family) keep per-row ``rope_deltas`` from the prefill: their text positions are the
    count of real tokens before each one, shifted by that row's delta, as ``generate`` computes them."""
    deltas = getattr(getattr(model, "model", None), "rope_deltas", None)
    if deltas is None:
        return None
    rows = attention_mask.shape[0]
    text = (attention_mask.long().cumsum(-1) - 1)[:, -new_tokens:]
    deltas = deltas.repeat_interleave(rows // deltas.shape[0], dim=0).to(text.device)
    return (text + deltas)[None].expand(3, -1, -1)


def score_cached(adapter, model, inputs, token_ids: list[list[list[int]]], pad_token_id: int) -> list[list[float]]:
    """Sum of log-probabilities of each candidate's tokens given its prompt. ``inputs``: the
    left-padded prompts as the adapter encodes them; ``token_ids``: per prompt, per candidate, the
    token ids to score (from :func:`candidate_token_ids`). One candidate at a time goes through the
    model on the prompts' cache, which is cut back to the prompts after each: memory stays that of
    the prompts' batch, as in generation."""
    import torch

    n_cands = len(token_ids[0])
    from vlmexp.engines.prefix import output_cache, prefill

    prompts = prefill(adapter, model, inputs)
    first = torch.log_softmax(prompts.logits[:, -1].float(), dim=-1)
    scores = torch.tensor([[float(first[i, row[j][0]]) for j in range(n_cands)] for i, row in enumerate(token_ids)])
    cache = output_cache(prompts)
    prompt_len, device = cache.get_seq_length(), inputs["input_ids"].device
    for j in range(n_cands):
        column = [row[j] for row in token_ids]
        width = max(len(ids) for ids in column) - 1  # the last token of a candidate is only predicted
        if width == 0:
            continue
        feed = torch.full((len(column), width), pad_token_id, dtype=torch.long, device=device)
        for i, ids in enumerate(column):
            feed[i, :len(ids) - 1] = torch.tensor(ids[:-1])
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(feed)], dim=1)
        batch = {"input_ids": feed, "attention_mask": mask, "cache": cache, "use_cache": True}
        positions = continuation_position_ids(model, mask, width)
        if positions is not None:
            batch["position_ids"] = positions
        logprobs = torch.log_softmax(adapter.forward(model, batch).logits.float(), dim=-1)
        cache.crop(-(cache.get_seq_length() - prompt_len))  # back to the prompts for the next candidate
        for i, ids in enumerate(column):
            rest = torch.tensor(ids[1:], device=logprobs.device)
            scores[i, j] += float(logprobs[i, :len(ids) - 1].gather(-1, rest[:, None]).sum())
    return scores.tolist()
