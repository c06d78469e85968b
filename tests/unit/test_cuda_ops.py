"""The CUDA model path against the torch one on the same weights and batch: the CUDA
``DeviceOps`` (fused norm, SiLU-mul, rotary) and the Triton attention backend (fused KV
write, paged attention, split-KV decodes) over an eager ``StepPlan`` batch. On the GPU when
there is one, else under Triton's CPU interpreter in a subprocess (the interpreter is
chosen when triton is imported)."""

from __future__ import annotations

import textwrap

import torch

from tests.unit.interpreted import run_interpreted

CHECK = textwrap.dedent(
    """
    import numpy as np, torch
    import torch.nn.functional as F
    from pagedllm.attention.torch_backend import TorchAttentionBackend
    from pagedllm.attention.triton_backend import TritonAttentionBackend
    from pagedllm.model.decoder import CausalLM, DecoderSpec, ForwardContext
    from pagedllm.model.layers import cuda_ops
    from pagedllm.model.layers.device_ops import TORCH_OPS, DeviceOps
    from pagedllm.worker.input_batch import HostBatch
    from pagedllm.worker.step_plan import eager_step_batch, plan_step
    from tests.conftest import tiny_config

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fused_ops = DeviceOps(
        "cuda", cuda_ops.linear, cuda_ops.gated_linear, cuda_ops.rms_norm,
        cuda_ops.add_rms_norm, cuda_ops.silu_and_mul,
        cuda_ops.rotary_rows, cuda_ops.rope_qk,
    )
    BS = 16

    def host(query_lens, seq_lens):
        qsl = np.concatenate([[0], np.cumsum(query_lens)]).astype(np.int32)
        blocks = [-(-s // BS) for s in seq_lens]
        table = np.zeros((len(seq_lens), max(blocks)), dtype=np.int32)
        first, positions, slots = 0, [], []
        for i, (q, s) in enumerate(zip(query_lens, seq_lens)):
            table[i, : blocks[i]] = np.arange(first, first + blocks[i])
            first += blocks[i]
            p = np.arange(s - q, s)
            positions.append(p)
            slots.append(table[i][p // BS].astype(np.int64) * BS + p % BS)
        tokens = int(qsl[-1])
        return HostBatch(
            req_ids=[str(i) for i in range(len(seq_lens))],
            input_ids=np.random.randint(0, 384, tokens).astype(np.int64),
            positions=np.concatenate(positions), slot_mapping=np.concatenate(slots),
            query_start_loc=qsl, seq_lens=np.array(seq_lens, dtype=np.int32), block_table=table,
            logits_indices=qsl[1:].astype(np.int64) - 1,
            sampled_req_indices=list(range(len(seq_lens))),
            num_decodes=sum(q == 1 for q in query_lens), block_size=BS,
        )

    torch.manual_seed(0)
    np.random.seed(0)
    config = tiny_config("qwen3")  # q/k norms: the fused rotary's whole path
    config.num_hidden_layers = 1  # the interpreter is slow; one layer has every kernel
    spec = DecoderSpec.from_config(config, "qwen3")
    with torch.device(device):
        reference = CausalLM(spec, torch.float32, TORCH_OPS)
        for name, p in reference.named_parameters():
            p.data.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.data.normal_(0, 0.2)
        fused = CausalLM(spec, torch.float32, fused_ops)
        fused.load_state_dict(reference.state_dict())
        caches = [torch.randn(2, 16, BS, spec.num_kv_heads, spec.head_dim) for _ in range(1)]
    triton = TritonAttentionBackend(num_sms=4)  # few: a 3-request decode batch splits its KV
    # decodes only (split-KV), then decodes with a first chunk and a chunk after a prefix
    for query_lens, seq_lens in [([1, 1, 1], [20, 5, 40]), ([1, 1, 7, 12], [33, 2, 7, 30])]:
        batch = host(query_lens, seq_lens)
        outs = []
        for model, backend in ((reference, TorchAttentionBackend()), (fused, triton)):
            kv = [c.clone() for c in caches]
            segments = backend.segments_for(batch.num_reqs, batch.max_query_len, 2)
            step = eager_step_batch(batch, plan_step(batch, segments), device)
            ctx = ForwardContext(backend, backend.build_metadata(step.attn), kv)
            with torch.inference_mode():
                outs.append((model(step.input_ids, step.positions, ctx), kv, segments))
        (want, want_kv, one), (got, got_kv, split) = outs
        assert one == 1 and split == (2 if len(query_lens) == 3 else 1)
        assert ((got - want).norm() / want.norm()).item() < 1e-4
        for a, b in zip(got_kv, want_kv):
            assert ((a - b).norm() / b.norm()).item() < 1e-5
    print("CUDA_OPS_OK")
    """
)


def test_cuda_ops_and_triton_backend_match_the_torch_path() -> None:
    if torch.cuda.is_available():
        exec(compile(CHECK, "cuda_ops_check", "exec"), {})
        return
    run_interpreted(CHECK, "CUDA_OPS_OK", timeout=600)
