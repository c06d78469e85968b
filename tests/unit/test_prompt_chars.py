"""Text bounded before the tokenizer sees it: each token covers at most its vocabulary
entry's characters (4x for normalizers), so text past ``max_model_len`` times that could
never fit the context and would only be tokenized (60 MB took 8.6 GB)."""

from __future__ import annotations

import pytest

from pagedllm.inputs.tokenizer import TextBounds, bounded_text, encode_bounded, prompt_char_limit


class Vocabulary:
    def get_vocab(self) -> dict[str, int]:
        return {"a": 0, "abcdef": 1}


def test_the_limit_follows_the_longest_entry_and_the_context():
    assert prompt_char_limit(Vocabulary(), 1000) == 1000 * 6 * 4
    assert prompt_char_limit(object(), 1000) == 64 << 20  # no vocabulary to read


def test_text_past_the_limit_is_refused_or_cut_to_its_tail():
    assert bounded_text("abcdef", 6, keep_tail=False) == "abcdef"
    assert bounded_text("abcdefgh", 6, keep_tail=True) == "cdefgh"
    with pytest.raises(ValueError, match="8 characters, more than the model's context"):
        bounded_text("abcdefgh", 6, keep_tail=False)


class ByteTokens:
    """Four tokens a character (byte fallback of 4-byte characters, emoji); remembers the
    longest text it was given at once."""

    def __init__(self) -> None:
        self.longest = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        self.longest = max(self.longest, len(text))
        return [ord(c) for c in text for _ in range(4)]


BOUNDS = TextBounds(max_chars=10**7, max_tokens=100)  # the characters' bound is far


def test_text_of_many_tokens_a_character_is_counted_in_parts_and_refused():
    tokenizer = ByteTokens()
    with pytest.raises(ValueError, match="more than 200 tokens, longer than the maximum"):
        encode_bounded(tokenizer, "x" * 2_000_000, True, BOUNDS)
    assert tokenizer.longest == 100  # one part at a time, never the whole


def test_to_be_truncated_it_is_cut_where_its_tail_holds_enough():
    tokenizer = ByteTokens()
    text = "a" * 1_000_000 + "b" * 150
    ids, cut = encode_bounded(tokenizer, text, True, BOUNDS, keep_tail=True)
    # Parts from the end (50, then 100 characters) until past 200 tokens: cut there.
    assert cut and ids == [ord("b")] * 600 and tokenizer.longest == 150


def test_short_text_is_tokenized_once_whole():
    tokenizer = ByteTokens()
    ids, cut = encode_bounded(tokenizer, "y" * 800, True, BOUNDS)
    assert (len(ids), cut, tokenizer.longest) == (3200, False, 800)  # 8 chars a token: kept


def test_text_is_measured_in_bytes_not_characters():
    """250 emoji: few characters (the old measure let them through whole), 1,000 bytes."""
    tokenizer = ByteTokens()
    with pytest.raises(ValueError, match="more than 200 tokens"):
        encode_bounded(tokenizer, "\U0001f600" * 250, True, BOUNDS)
    assert tokenizer.longest == 100
