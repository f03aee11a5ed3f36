"""Generation batched by prompt length with the next batch encoded ahead: answers in request order,
the same as one request at a time."""

from __future__ import annotations

from PIL import Image

from tests.test_hf_engine import lively_model, requests  # noqa: F401  (the fixture)
from vlmexp.engines.hf import HFEngine
from vlmexp.engines.pipeline import EncodeAhead, by_prompt_length
from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat


def test_answers_come_back_in_request_order_whatever_the_batching(lively_model):  # noqa: F811
    model, processor = lively_model
    mixed = requests() + requests()[::-1]  # sizes and prompt lengths interleaved
    single = [g.text for g in HFEngine(batch_size=1, model=model, processor=processor).generate(mixed)]
    assert len(set(single)) >= 3
    for batch_size in (2, 3, 4):
        batched = HFEngine(batch_size=batch_size, model=model, processor=processor).generate(mixed)
        assert [g.text for g in batched] == single, batch_size


def _request(size: tuple[int, int], text: str) -> ChatRequest:
    return ChatRequest(chat(None, ImagePart(Image.new("RGB", size)), TextPart(text)))


def test_requests_are_ordered_by_images_then_pixels_then_text():
    reqs = [_request((100, 100), "long question here"), ChatRequest(chat(None, TextPart("no image"))),
            _request((50, 50), "a"), _request((100, 100), "short"), _request((50, 50), "b")]
    assert by_prompt_length(reqs) == [1, 2, 4, 3, 0]


def test_encode_ahead_gives_each_chunk_its_encoding_and_redoes_a_retried_one():
    items = [ChatRequest(chat(None, TextPart(str(i)))) for i in range(7)]
    encoded: list[list[str]] = []

    def encode(chunk):
        encoded.append([r.messages[-1].text for r in chunk])
        return [r.messages[-1].text for r in chunk]

    with EncodeAhead(items, encode) as ahead:
        assert ahead.take(items[0:3]) == ["0", "1", "2"]
        # out of memory on the next chunk: it is retried in halves, so the chunk encoded ahead is not used
        assert ahead.take(items[3:4]) == ["3"]
        assert ahead.take(items[4:5]) == ["4"]
        assert ahead.take(items[5:6]) == ["5"]
        assert ahead.take(items[6:7]) == ["6"]
    # 0-2 on the spot, then 3-5 ahead (unused, maybe cancelled before it ran); the retried 3 on the
    # spot; 4, 5 and 6 each encoded once, ahead of their turn
    assert encoded[0] == ["0", "1", "2"]
    rest = [e for e in encoded[1:] if e != ["3", "4", "5"]]
    assert rest == [["3"], ["4"], ["5"], ["6"]]


def test_a_batch_sharing_its_prompt_start_generates_what_one_request_at_a_time_does(lively_model):  # noqa: F811
    """Prompts of one length: their shared start (system prompt, text before the image) runs once for
    the batch and ``generate`` continues from its cache; the answers are those of batch size 1."""
    from tests.test_cached_scoring import same_length_requests
    from vlmexp.engines.prefix import generation_cache, shared_prefix_length

    model, processor = lively_model
    reqs = same_length_requests() * 2
    engine = HFEngine(batch_size=8, model=model, processor=processor)
    inputs = engine._encode_requests(reqs)
    assert shared_prefix_length(model, inputs) >= 16
    assert generation_cache(engine.adapter, model, inputs).get_seq_length() == shared_prefix_length(model, inputs)
    single = [g.text for g in HFEngine(batch_size=1, model=model, processor=processor).generate(reqs)]
    assert len(set(single)) >= 3
    assert [g.text for g in engine.generate(reqs)] == single


def test_llava_generates_from_the_shared_start_as_without_it(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tests.test_cached_scoring import randomised, same_length_requests
    from tests.tiny_llava import build_tiny_llava_checkpoint

    folder = build_tiny_llava_checkpoint(str(tmp_path))
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.pad_token = processor.tokenizer.pad_token or processor.tokenizer.eos_token
    model = randomised(AutoModelForImageTextToText.from_pretrained(folder))
    reqs = same_length_requests()
    single = [g.text for g in HFEngine(batch_size=1, max_new_tokens=8, model=model, processor=processor).generate(reqs)]
    assert len(set(single)) >= 2
    assert [g.text for g in HFEngine(batch_size=4, max_new_tokens=8, model=model,
                                     processor=processor).generate(reqs)] == single
