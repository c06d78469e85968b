"""Prompt sources for ``pagedllm bench serve``: vLLM's random and ShareGPT datasets, each a
list of ``SampleRequest`` (the prompt text, its length in tokens, the output length to ask for).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pagedllm.logger import init_logger

logger = init_logger(__name__)

# vLLM's ShareGPT filter: shorter items measure little; longer ones overflow common contexts.
MIN_SEQ_LEN = 4
MAX_PROMPT_LEN = 1024
MAX_TOTAL_LEN = 2048


@dataclass(frozen=True)
class SampleRequest:
    prompt: str
    prompt_len: int  # tokens, counted by the benchmark's tokenizer
    output_len: int  # max_tokens asked of the server


def load_tokenizer(path: str) -> Any:
    """A local Hugging Face tokenizer: a directory, or a ``tokenizer.json`` file. Nothing is
    ever downloaded."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    location = Path(path).expanduser()
    try:
        if location.is_dir():
            return AutoTokenizer.from_pretrained(str(location), local_files_only=True)
        if location.is_file() and location.suffix == ".json":
            return PreTrainedTokenizerFast(tokenizer_file=str(location))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--tokenizer {path}: cannot load a tokenizer from it ({exc})") from exc
    raise ValueError(
        f"--tokenizer {path!r} is neither a local tokenizer directory nor a tokenizer.json file; "
        "pass one (the benchmark never downloads)"
    )


def random_requests(
    tokenizer: Any,
    num: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    prefix_len: int = 0,
    seed: int = 0,
) -> list[SampleRequest]:
    """vLLM's random dataset: token ids drawn uniformly from the vocabulary (special tokens
    excluded) and decoded to text. Lengths are uniform in ``len * [1 - ratio, 1 + ratio]``; a
    prefix of ``prefix_len`` ids is shared by every prompt. One seed, one set of prompts."""
    check_random_lengths(input_len, output_len, range_ratio, prefix_len)
    rng = np.random.default_rng(seed)
    ids = ordinary_token_ids(tokenizer)
    prefix = rng.choice(ids, size=prefix_len).tolist()
    input_lens = _uniform_lengths(rng, input_len, range_ratio, num)
    output_lens = _uniform_lengths(rng, output_len, range_ratio, num)
    return [
        _decoded(tokenizer, prefix + rng.choice(ids, size=n).tolist(), int(out))
        for n, out in zip(input_lens, output_lens)
    ]


def check_random_lengths(
    input_len: int, output_len: int, range_ratio: float, prefix_len: int
) -> None:
    if not 0 <= range_ratio < 1:
        raise ValueError(f"--random-range-ratio must be in [0, 1), got {range_ratio}")
    if input_len < 1 or output_len < 1 or prefix_len < 0:
        raise ValueError(
            "--random-input-len and --random-output-len must be at least 1 and "
            f"--random-prefix-len at least 0 (got {input_len}, {output_len}, {prefix_len})"
        )


def ordinary_token_ids(tokenizer: Any) -> np.ndarray:
    """Every id of the vocabulary (added tokens included) but the special ones."""
    return np.setdiff1d(np.arange(len(tokenizer)), np.asarray(tokenizer.all_special_ids))


def _uniform_lengths(rng: np.random.Generator, length: int, ratio: float, num: int) -> np.ndarray:
    low = max(math.floor(length * (1 - ratio)), 1)
    high = max(math.ceil(length * (1 + ratio)), low)
    return rng.integers(low, high + 1, size=num)


def _decoded(tokenizer: Any, ids: list[int], output_len: int) -> SampleRequest:
    # Decoding then encoding can merge ids into fewer tokens or split them into more; one
    # truncation keeps the prompt from running past its drawn length.
    text = _decode(tokenizer, ids)
    tokens = _encode(tokenizer, text)
    if len(tokens) > len(ids):
        text = _decode(tokenizer, tokens[: len(ids)])
        tokens = _encode(tokenizer, text)
    return SampleRequest(text, len(tokens), output_len)


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def sharegpt_requests(
    path: str, tokenizer: Any, num: int, output_len: int | None = None, seed: int = 0
) -> list[SampleRequest]:
    """ShareGPT conversations, shuffled by ``seed``: the first human turn is the prompt; the
    gpt turn after it sets the output length unless ``output_len`` is given. Items too short
    or too long are skipped as vLLM does; too few usable items are repeated to make ``num``."""
    pairs = _conversation_pairs(_read_json(path))
    rng = random.Random(seed)
    rng.shuffle(pairs)
    samples: list[SampleRequest] = []
    for prompt, completion in pairs:
        if len(samples) == num:
            break
        sample = _sharegpt_sample(tokenizer, prompt, completion, output_len)
        if sample is not None:
            samples.append(sample)
    if not samples:
        raise ValueError(
            f"--dataset-path {path}: no conversation has a human turn of {MIN_SEQ_LEN} to "
            f"{MAX_PROMPT_LEN} tokens followed by a gpt turn (at most {MAX_TOTAL_LEN} in all)"
        )
    if len(samples) < num:
        logger.warning(
            "%s has %d usable conversations; repeating some to make %d", path, len(samples), num
        )
        samples += rng.choices(samples, k=num - len(samples))
    return samples


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--dataset-path {path}: cannot read it as JSON ({exc})") from exc


def _conversation_pairs(data: Any) -> list[tuple[str, str]]:
    """(first human turn, the gpt turn after it) of each item that has both."""
    if not isinstance(data, list):
        raise ValueError("--dataset-path: a ShareGPT file is a JSON list of conversations")
    pairs = []
    for item in data:
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list):
            continue
        texts = [(t.get("from"), t.get("value")) for t in turns if isinstance(t, dict)]
        human = next((i for i, (who, v) in enumerate(texts) if who == "human"), None)
        if human is None or not isinstance(texts[human][1], str):
            continue
        reply = next((v for who, v in texts[human + 1 :] if who == "gpt"), None)
        if isinstance(reply, str):
            pairs.append((texts[human][1], reply))
    return pairs


def _sharegpt_sample(
    tokenizer: Any, prompt: str, completion: str, output_len: int | None
) -> SampleRequest | None:
    prompt_len = len(_encode(tokenizer, prompt))
    wanted = output_len if output_len is not None else len(_encode(tokenizer, completion))
    too_short = prompt_len < MIN_SEQ_LEN or (output_len is None and wanted < MIN_SEQ_LEN)
    too_long = prompt_len > MAX_PROMPT_LEN or prompt_len + wanted > MAX_TOTAL_LEN
    return None if too_short or too_long else SampleRequest(prompt, prompt_len, wanted)
