"""llama.cpp's ``convert_hf_to_gguf.py`` for the tiny checkpoint: ``python tests/llama_convert.py LLAMA_CPP_DIR
CHECKPOINT [converter arguments]``, run with the vendored converter (and its gguf-py) on the path.

Three settings the converter cannot find for the tiny model's toy sizes, given here: its tokenizer splits text
with Qwen2's pre-tokenizer regex but has a vocabulary of its own, whose hash the converter's table of known
tokenizers lacks (so the pre-tokenizer is named: qwen2); it has no sentencepiece model (byte-level BPE, as the
converter finds for Qwen2-VL when the sentencepiece package is installed); and its vision tower has 2 blocks,
fewer than the merger's MLP index (``visual.merger.mlp.2``), which the converter's name map only covers up to
the block count (real Qwen2.5-VL towers have 32).
"""

from __future__ import annotations

import sys


def main() -> None:
    sys.path.insert(0, sys.argv.pop(1))
    import convert_hf_to_gguf
    import gguf
    from conversion import base, qwenvl

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    qwenvl.Qwen2VLModel.set_vocab = lambda self: self._set_vocab_gpt2()
    original_init = base.MmprojModel.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(self.block_count, 3))

    base.MmprojModel.__init__ = init
    sys.argv[0] = "convert_hf_to_gguf.py"
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
