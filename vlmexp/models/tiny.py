"""The tiny model: the real Qwen2.5-VL architecture at toy size, built offline.

``build_tiny_checkpoint`` trains a small byte-level BPE tokenizer (Qwen's pre-tokenizer, special
tokens and chat template), initialises ``Qwen2_5_VLForConditionalGeneration`` from a small config
with a fixed seed, and saves model + processor with ``save_pretrained`` into the cache. Everything
after that loads it through ``from_pretrained`` exactly like a Hub checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlmexp.paths import build_once, expand

# Changing anything below changes the checkpoint, so it is part of the cache key.
TINY_VERSION = 1
VOCAB_SIZE = 1024
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)
VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1])
# 3 sections over half of head_dim (128 / 4 heads = 32 -> 16): temporal, height, width.
MROPE_SECTION = [4, 6, 6]

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# The chat template Qwen2.5-VL-Instruct ships (chat_template.json on the Hub).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the tokenizer's merges are learnt from: the framework's prompts and answer formats, so
# they take few tokens; anything else still encodes, byte by byte.
_CORPUS = [
    "You are a helpful assistant.",
    "You are an early-fire detection agent. Answer ONLY with a valid JSON matching this schema: "
    '{"has_smoke": bool, "bbox": [x_center, y_center, width, height]}.',
    '{"has_smoke": true, "bbox": [0.5, 0.25, 0.125, 0.75]}',
    '{"has_smoke": false, "bbox": [0, 0, 0, 0]}',
    "Is there wildfire smoke in this image? Give the box of the smoke, normalised to 0..1, "
    "or [0, 0, 0, 0] when there is none. If output does NOT match JSON schema, answer exactly: BAD_JSON",
    "Explain your JSON in 20 words.",
    "Analyze the emotional sentiment expressed in this sign language video. Focus on: Facial expressions "
    "of the signer, Body language and gestures, Overall emotional tone conveyed, Context from the signing "
    "content. Classify the sentiment as either: Positive: Happy, joyful, optimistic, enthusiastic, "
    "satisfied emotions. Negative: Sad, angry, frustrated, disappointed, worried, stressed emotions. "
    'Respond with ONLY one word: either "Positive" or "Negative".',
    "Question: What colour is the shape? Answer: red green blue yellow white black orange purple",
    "Is the background light or dark? light dark. What shape is it? circle square triangle. yes no",
    "How many objects are there? There are 3 objects in this image. Describe the image.",
    "the a an of in on at to is are this that with and or for what which where how",
]


def _corpus() -> list[str]:
    # Repeat so the frequent phrases win merges deterministically.
    return [line for line in _CORPUS for _ in range(20)]


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = BpeTrainer(vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS), show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=None,
                               eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.add_tokens([SPECIAL_TOKENS[0]], special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    video_processor = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=112 * 112 * 4)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def build_model(tokenizer, seed: int = 0):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    vocab = (len(tokenizer) + 63) // 64 * 64
    config = Qwen2_5_VLConfig(
        text_config=dict(TEXT, vocab_size=vocab, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                  "mrope_section": MROPE_SECTION},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(VISION, out_hidden_size=TEXT["hidden_size"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    return model


def checkpoint_key() -> str:
    spec = json.dumps([TINY_VERSION, VOCAB_SIZE, TEXT, VISION, MROPE_SECTION, _CORPUS, CHAT_TEMPLATE],
                      sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def build_tiny_checkpoint(cache_dir: str = "~/.cache/vlmexp") -> str:
    """Return the folder of the tiny checkpoint, building it on first use (a few seconds)."""

    def build(folder: Path) -> None:
        import torch

        # The fixed seed is the checkpoint's own: the caller's random state is left as it was, so a run
        # that builds the model gives the same results as one that finds it in the cache.
        with torch.random.fork_rng(devices=[]):
            tokenizer = build_tokenizer()
            build_processor(tokenizer).save_pretrained(folder)
            build_model(tokenizer).save_pretrained(folder)

    return str(build_once(expand(cache_dir) / "models" / f"tiny-qwen2_5_vl-{checkpoint_key()}", build))
