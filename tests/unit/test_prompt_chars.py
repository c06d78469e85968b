"""Text bounded before the tokenizer sees it: each token covers at most its vocabulary
entry's characters (4x for normalizers), so text past ``max_model_len`` times that could
never fit the context and would only be tokenized (60 MB took 8.6 GB)."""

from __future__ import annotations

import pytest

from pagedllm.inputs.tokenizer import bounded_text, prompt_char_limit


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
