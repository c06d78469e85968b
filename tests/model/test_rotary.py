"""Rope scaling variants against transformers' own initialisers."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from pagedllm.model.layers.rotary import inv_freq_and_scaling, rope_parameters

CASES = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 40.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
        "beta_fast": 16,
        "beta_slow": 2,
        "original_max_position_embeddings": 4096,
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_inv_freq_matches_transformers(case):
    params = {**CASES[case], "rope_theta": 500000.0}
    config = transformers.LlamaConfig(
        hidden_size=1024,
        num_attention_heads=8,
        max_position_embeddings=131072,
        rope_parameters=params,
    )
    expected_inv_freq, expected_scaling = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu")
    inv_freq, scaling = inv_freq_and_scaling(rope_parameters(config), 128, 131072)
    torch.testing.assert_close(inv_freq, expected_inv_freq.float(), rtol=1e-6, atol=0)
    assert scaling == pytest.approx(expected_scaling)


def test_unknown_rope_type_is_refused():
    with pytest.raises(ValueError, match="longrope"):
        inv_freq_and_scaling({"rope_type": "longrope", "rope_theta": 1e4}, 64, 128)
