"""What the torch attention backend answers to the runner's and CUDA graphs' questions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagedllm.attention.backend import create_backend
from pagedllm.attention.torch_backend import TorchAttentionBackend
from pagedllm.worker.input_batch import HostBatch
from pagedllm.worker.step_plan import eager_step_batch, plan_step


def one_decode() -> HostBatch:
    return HostBatch(
        req_ids=["a"], input_ids=np.zeros(1, dtype=np.int64),
        positions=np.zeros(1, dtype=np.int64), slot_mapping=np.zeros(1, dtype=np.int64),
        query_start_loc=np.array([0, 1], dtype=np.int32), seq_lens=np.ones(1, dtype=np.int32),
        block_table=np.zeros((1, 1), dtype=np.int32), logits_indices=np.zeros(1, dtype=np.int64),
        sampled_req_indices=[0], num_decodes=1, block_size=16,
    )  # fmt: skip


def test_the_cpu_gets_the_torch_backend_which_never_splits_kv() -> None:
    backend = create_backend("cpu")
    assert isinstance(backend, TorchAttentionBackend)
    assert backend.segments_for(1, 1, 1) == 1  # the smallest batch: a CUDA backend splits it


def test_the_torch_backend_refuses_cuda_graphs_by_name() -> None:
    host = one_decode()
    step = eager_step_batch(host, plan_step(host, 1), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"enforce_eager=True.*PAGEDLLM_ATTENTION_BACKEND"):
        TorchAttentionBackend().capture_metadata(step.attn)


@pytest.mark.parametrize("kv_written", [False, True])
def test_the_torch_backend_writes_kv_unless_the_layer_did(kv_written: bool) -> None:
    """One decode at slot 0: the backend stores k and v there itself, or (``kv_written``)
    leaves the cache as the layer's rotary op wrote it and attends over that."""
    host = one_decode()
    step = eager_step_batch(host, plan_step(host, 1), torch.device("cpu"))
    backend = TorchAttentionBackend()
    metadata = backend.build_metadata(step.attn)
    assert backend.slot_mapping(metadata).tolist() == [0]
    q, k, v = (torch.randn(1, 2, 8) for _ in range(3))
    cache = torch.randn(2, 1, 16, 2, 8)
    written = cache[:, 0, 0].clone()  # what the layer put at the slot
    out = backend.forward(q, k, v, cache, metadata, 1.0, torch.ones(2), kv_written=kv_written)
    stored = written if kv_written else torch.stack([k[0], v[0]])
    assert torch.equal(cache[:, 0, 0], stored)
    torch.testing.assert_close(out, stored[1][None])  # one key: the output is its value
