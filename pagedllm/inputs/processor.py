"""Validate and tokenize one prompt and resolve its sampling parameters.

Every check a request must pass before it reaches the scheduler lives here, so that bad
input is refused with a sentence and never enters the engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pagedllm.config import ModelConfig, StructuredOutputsConfig
from pagedllm.inputs.prompts import MAX_CACHE_SALT, PromptType, truncate_prompt
from pagedllm.inputs.tokenizer import TextBounds, encode_bounded, prompt_char_limit
from pagedllm.sampling_params import (
    LOGIT_BIAS_LIMIT,
    MAX_BAD_WORD_TOKENS,
    RequestOutputKind,
    SamplingParams,
    few_ids,
)

if TYPE_CHECKING:
    from pagedllm.structured_output.spec import GrammarSpec


@dataclass(frozen=True)
class ProcessedPrompt:
    prompt: str | None
    prompt_token_ids: list[int]
    cache_salt: str | None = None


class InputProcessor:
    def __init__(
        self,
        model_config: ModelConfig,
        tokenizer: Any,
        structured_outputs_config: StructuredOutputsConfig | None = None,
        max_samples: int | None = None,
    ) -> None:
        self.model_config = model_config
        # The most samples (n, best_of) one request may ask for; None: no bound (offline).
        self.max_samples = max_samples
        self.structured_outputs_config = structured_outputs_config or StructuredOutputsConfig()
        self.tokenizer = tokenizer
        self.max_model_len = model_config.max_model_len
        self._text_bounds: TextBounds | None = None  # text_bounds, on first use
        self.vocab_size = model_config.vocab_size
        self.eos_token_id = getattr(tokenizer, "eos_token_id", None) if tokenizer else None
        if self.eos_token_id is None:
            eos = model_config.generation_config.get("eos_token_id")
            eos = (
                eos if eos is not None else getattr(model_config.text_config, "eos_token_id", None)
            )
            self.eos_token_id = eos[0] if isinstance(eos, list) and eos else eos

    # -- prompts -------------------------------------------------------------------------

    def process_prompt(self, prompt: PromptType, params: SamplingParams) -> ProcessedPrompt:
        text, token_ids, salt = self._read_prompt(prompt)
        if token_ids is None:
            token_ids = self._tokenize(text, keep_tail=params.truncate_prompt_tokens is not None)
        token_ids = truncate_prompt(token_ids, params.truncate_prompt_tokens, self.max_model_len)
        self._check_prompt(token_ids)
        return ProcessedPrompt(text, token_ids, salt)

    def _read_prompt(self, prompt: PromptType) -> tuple[str | None, list[int] | None, str | None]:
        if isinstance(prompt, str):
            return prompt, None, None
        if not isinstance(prompt, dict):
            raise ValueError(
                "A prompt must be a string, {'prompt': str} or {'prompt_token_ids': [...]}, "
                f"got {type(prompt).__name__}."
            )
        unknown = set(prompt) - {"prompt", "prompt_token_ids", "cache_salt"}
        if unknown:
            raise ValueError(f"Unsupported prompt field(s): {', '.join(sorted(unknown))}.")
        salt = prompt.get("cache_salt")
        if salt is not None and not isinstance(salt, str):
            raise ValueError("cache_salt must be a string.")
        if salt is not None and len(salt) > MAX_CACHE_SALT:
            raise ValueError(
                f"cache_salt is {len(salt)} characters; at most {MAX_CACHE_SALT} are allowed."
            )
        if "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                raise ValueError("prompt_token_ids must be a list of integers.")
            return prompt.get("prompt"), list(ids), salt
        if "prompt" in prompt and isinstance(prompt["prompt"], str):
            return prompt["prompt"], None, salt
        raise ValueError("A prompt dict needs 'prompt' (a string) or 'prompt_token_ids'.")

    def _tokenize(self, text: str | None, keep_tail: bool) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(
                "The engine was started with skip_tokenizer_init=True: give prompts as token "
                'ids ({"prompt_token_ids": [...]}).'
            )
        return encode_bounded(self.tokenizer, text or "", True, self.text_bounds, keep_tail).ids

    @property
    def text_bounds(self) -> TextBounds:
        """``prompt_char_limit`` of this tokenizer and context, read once (a scan of the
        vocabulary), and the context; the server's encoders bound text by them too."""
        if self._text_bounds is None:
            chars = prompt_char_limit(self.tokenizer, self.max_model_len)
            self._text_bounds = TextBounds(chars, self.max_model_len)
        return self._text_bounds

    def _check_prompt(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise ValueError("The prompt is empty: it must contain at least one token.")
        bad = next((t for t in token_ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ValueError(
                f"prompt must hold token ids in [0, {self.vocab_size}): token id {bad} is out "
                "of vocabulary."
            )
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"The prompt (length {len(token_ids)}) is longer than the maximum model length "
                f"of {self.max_model_len}: there is no room to generate a token."
            )

    # -- sampling parameters -------------------------------------------------------------

    def process_params(self, params: SamplingParams, prompt_len: int) -> SamplingParams:
        """A resolved copy: max_tokens set, the model's end-of-sequence ids added."""
        if params.detokenize and self.tokenizer is None:
            raise ValueError(
                "detokenize=True needs a tokenizer, but the engine was started with "
                "skip_tokenizer_init=True; pass SamplingParams(detokenize=False)."
            )
        bad = [t for t in params.stop_token_ids or [] if t >= self.vocab_size]
        if bad:
            raise ValueError(
                f"stop_token_ids {few_ids(bad)} are out of vocabulary (size {self.vocab_size})."
            )
        # Longer than the vocabulary: repeats. Refused before the copy below copies them.
        allowed = params.allowed_token_ids
        if allowed is not None and len(allowed) > self.vocab_size:
            raise ValueError(
                f"allowed_token_ids must have at most {self.vocab_size} ids (the vocabulary's "
                f"size), got {len(allowed)}."
            )
        resolved = params.clone()
        # As vLLM V1 offline: a request that asks past the context runs until it fills it and
        # ends with finish_reason "length" (the server clamps the same way before this).
        room = self.max_model_len - prompt_len
        if resolved.max_tokens is None or resolved.max_tokens > room:
            resolved.max_tokens = room
        resolved.update_from_generation_config(
            self.model_config.generation_config, self.eos_token_id
        )
        if not resolved.ignore_eos and self.eos_token_id is not None:
            resolved.all_stop_token_ids.add(self.eos_token_id)
        self._check_token_controls(resolved)
        return resolved

    def check_sequences(self, num_prompts: int, samples: int) -> None:
        """A request of several prompts (a server's batched completion): its sequences, all
        prompts' samples, are bounded as one prompt's are (``max_samples``, --max-n): 500
        prompts of n=128 were 64,000 sequences from a 3 KB body."""
        total = num_prompts * samples
        if self.max_samples is not None and total > self.max_samples:
            raise ValueError(
                f"This request asks for {total} sequences ({num_prompts} prompts x {samples} "
                f"samples); this server allows at most {self.max_samples} per request (--max-n)."
            )

    def _check_token_controls(self, params: SamplingParams) -> None:
        """logprobs limits, best_of, logit_bias, allowed ids, bad words, processors."""
        limit = self.model_config.max_logprobs
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            asked = self.vocab_size if value == -1 else value
            if asked is not None and limit != -1 and asked > limit:
                shown = f"-1 (the whole vocabulary, {self.vocab_size})" if value == -1 else value
                raise ValueError(
                    f"{name} asks for {shown} top tokens, more than max_logprobs={limit} "
                    "(an engine option)."
                )
        samples = max(params.n, params.best_of or 0)
        if self.max_samples is not None and samples > self.max_samples:
            name = "n" if params.n >= samples else "best_of"
            raise ValueError(
                f"{name} is {samples}; this server allows at most {self.max_samples} samples "
                "per request (--max-n)."
            )
        streaming = params.output_kind != RequestOutputKind.FINAL_ONLY
        if params.best_of is not None and params.best_of > params.n and streaming:
            raise ValueError("best_of > n needs the whole output at once: it cannot stream.")
        if params.logit_bias:
            params.logit_bias = {
                self._token(_token_id(t, "logit_bias"), "logit_bias"): max(
                    -LOGIT_BIAS_LIMIT, min(LOGIT_BIAS_LIMIT, float(b))
                )
                for t, b in params.logit_bias.items()
            }
        if params.allowed_token_ids is not None:
            if not params.allowed_token_ids:
                raise ValueError("allowed_token_ids must not be empty.")
            # Each id once: the engine builds a mask row from the list whenever its batch
            # changes, so its length is bounded by the vocabulary, not by the client.
            params.allowed_token_ids = sorted(
                {self._token(t, "allowed_token_ids") for t in params.allowed_token_ids}
            )
        if params.bad_words:
            params.bad_words_token_ids = self._bad_words(params.bad_words)
        for fn in params.logits_processors or []:
            if not callable(fn):
                raise ValueError(f"logits_processors must be callables, got {fn!r}.")

    def _token(self, token_id: int, field: str) -> int:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"{field} must name token ids in [0, {self.vocab_size}): token id {token_id} "
                "is out of vocabulary."
            )
        return token_id

    def _bad_words(self, words: list[str]) -> list[list[int]]:
        """Each word as tokens, alone and after a space (vLLM's rule): both spellings banned."""
        if self.tokenizer is None:
            raise ValueError(
                "bad_words needs a tokenizer; the engine has none (skip_tokenizer_init)."
            )
        sequences: list[list[int]] = []
        for word in words:
            plain = self.tokenizer.encode(word.lstrip(), add_special_tokens=False)
            spaced = self.tokenizer.encode(" " + word.lstrip(), add_special_tokens=False)
            for ids in (plain, spaced):
                if ids and ids not in sequences:
                    sequences.append(ids)
        total = sum(len(ids) for ids in sequences)
        if total > MAX_BAD_WORD_TOKENS:  # each step compares them with the output's tail
            raise ValueError(
                f"bad_words tokenize to {total} tokens (both spellings of each word); at "
                f"most {MAX_BAD_WORD_TOKENS} are allowed."
            )
        return sequences

    def process_structured_outputs(self, params: SamplingParams) -> GrammarSpec | None:
        """The request's grammar, validated (ValueError naming the problem), or None.
        ``params`` (a resolved copy) keeps the constraint with the engine-wide options
        merged in: the engine core builds the same grammar from it."""
        if params.structured_outputs is None:
            return None
        if self.tokenizer is None:
            raise ValueError(
                "Structured outputs need a tokenizer; the engine was started with "
                "skip_tokenizer_init=True."
            )
        from pagedllm.structured_output.spec import build_grammar_spec

        engine = self.structured_outputs_config
        constraint = dataclasses.replace(
            params.structured_outputs,
            disable_any_whitespace=params.structured_outputs.disable_any_whitespace
            or engine.disable_any_whitespace,
            disable_additional_properties=params.structured_outputs.disable_additional_properties
            or engine.disable_additional_properties,
        )
        spec = build_grammar_spec(constraint)
        params.structured_outputs = constraint
        return spec


def _token_id(key: int | str, field: str) -> int:
    """A token id given as a key: an int or its decimal string (``SamplingParams`` checks
    that; JSON keys are strings). One of more than 20 characters is no 64-bit id, and past
    4,300 digits ``int()`` raised Python's own message: refused naming ``field``."""
    if isinstance(key, str) and len(key) > 20:
        raise ValueError(f"{field} keys must be token ids, got {key[:24]!r}...")
    return int(key)
