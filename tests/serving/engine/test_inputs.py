"""Prompt preparation: chat messages flattened to one text, text repaired for the tokenizer."""

from __future__ import annotations

from neural_router.serving.engine.inputs import clean_text, flatten_messages


def test_flatten_messages() -> None:
    text, img, aud, tools = flatten_messages([{"role": "user", "content": "just this"}])
    assert (text, img, aud, tools) == ("just this", False, False, False)
    text, *_ = flatten_messages([{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": [{"type": "text", "text": "hi"},
                                                              {"type": "image_url", "image_url": {"url": "u"}}]}])
    assert text == "system: be brief\nuser: hi\n[image]"
    _, img, aud, tools = flatten_messages([{"role": "user", "content": [{"type": "input_audio"}]},
                                           {"role": "tool", "content": "42"}])
    assert (img, aud, tools) == (False, True, True)


def test_clean_text_replaces_lone_surrogates() -> None:
    assert clean_text("a\ud800b") == "a?b"
    assert clean_text("plain") == "plain"
