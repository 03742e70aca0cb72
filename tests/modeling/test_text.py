"""neural_router.modeling.text: head+tail truncation, encoding and length buckets."""

import numpy as np

from neural_router.modeling.text import encode, head_tail, length_buckets


def test_head_tail_truncation_keeps_both_ends():
    ids = list(range(100))
    assert head_tail(ids, 10, 3) == [0, 1, 2] + list(range(93, 100))


def test_head_tail_leaves_a_short_prompt_alone():
    ids = list(range(5))
    assert head_tail(ids, 10, 3) == ids


def test_encode_reports_truncation_and_counts(tiny_trained_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_trained_dir))
    e = encode(tok, ["short", "word " * 500], 32, 4)
    assert e.input_ids.shape == (2, 32)
    assert e.truncated.tolist() == [False, True]
    assert e.input_tokens[1] == 500
    assert e.attention_mask[0].sum() < 32


def test_length_buckets_bound_padding_and_cover_every_row():
    lengths = np.array([5, 100, 6, 7, 50, 120, 9, 8])
    batches = length_buckets(lengths, 3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert all(len(b) <= 3 for b in batches)
    for b in batches:  # no short prompt is padded to a long one
        assert lengths[b].max() <= 1.3 * lengths[b].min() + 8
