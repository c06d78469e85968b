"""What the model runner remembers about each request between steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.sampling_params import SamplingParams, SamplingType


@dataclass(slots=True)  # its fields are read for every request every step
class RequestState:
    """Kept from a request's first step until it finishes, preemptions included: a resumed
    request recomputes its KV but keeps its tokens and its generator's position, so it
    continues exactly as it would have."""

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_row: int  # its row in the runner's BlockTable (block_table.py)
    num_computed_tokens: int
    token_ids: list[int]  # prompt + generated, as far as the host knows them
    generator: torch.Generator | None
    # Sampled by steps whose results are still on the device (async scheduling): up to 2,
    # between the next step's launch and this one's read; ``pending_row`` is the row of
    # the latest of them in that step's sampled ids, where the next step reads it.
    num_pending: int = 0
    pending_row: int = -1

    @classmethod
    def create(
        cls,
        req_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        block_row: int,
        num_computed_tokens: int,
        device: torch.device,
        output_token_ids: list[int] | None = None,
    ) -> RequestState:
        """``output_token_ids``: tokens generated before this state was made (a request
        whose state a failed step dropped; its generator then starts afresh)."""
        generator = None
        if params.sampling_type == SamplingType.RANDOM_SEED and params.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(params.seed)
        return cls(
            req_id,
            list(prompt_token_ids),
            params,
            block_row,
            num_computed_tokens,
            list(prompt_token_ids) + list(output_token_ids or []),
            generator,
        )

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def num_output_tokens(self) -> int:
        """Generated so far, the token in flight included."""
        return len(self.token_ids) - len(self.prompt_token_ids) + self.num_pending

    @property
    def num_tokens(self) -> int:
        """Prompt + generated, the token in flight included."""
        return len(self.token_ids) + self.num_pending
