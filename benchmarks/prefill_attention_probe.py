"""Where a later turn's prefill attention stands (issue 20's floor): the paged kernel over a
616-token chunk after a 3,072-token history (llama-8b's heads) against torch's SDPA on the
same keys gathered into contiguous tensors, by kernel, with the gather's own cost. GPU only.

    python benchmarks/prefill_attention_probe.py
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).parents[1]))
from pagedllm.kernels.attention_launch import PREFILL_CONFIG
from pagedllm.kernels.paged_attention import paged_attention


def main() -> None:
    for hist in (1024, 3072, 5120):
        probe(hist)


def probe(hist: int, new: int = 616) -> None:
    heads, kv_heads, dim, bs = 32, 8, 128, 16
    total = hist + new
    need = -(-total // bs)
    kv = torch.randn(2, need + 1, bs, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(new, heads, dim, device="cuda", dtype=torch.bfloat16)
    qsl = torch.tensor([0, new], dtype=torch.int32, device="cuda")
    seq = torch.tensor([total], dtype=torch.int32, device="cuda")
    flops = 4 * heads * dim * (new * hist + new * (new + 1) // 2)
    dense = 4 * heads * dim * new * total
    for label, table in (
        ("scattered blocks", torch.randperm(need + 1, device="cuda")[:need]),
        ("ascending blocks", torch.arange(need, device="cuda")),
    ):
        table = table.to(torch.int32)[None, :]
        out = torch.empty_like(q)
        kernel = functools.partial(paged_attention, q, kv, out, table, seq, qsl, 1, new,
                                   dim**-0.5, config=PREFILL_CONFIG)  # fmt: skip
        ms = do_bench(kernel, warmup=25, rep=100, return_mode="median")
        print(f"history {hist}: paged kernel, {label}: {ms * 1e3:7.1f} us, "
              f"{flops / ms / 1e9:5.0f} TFLOP/s")  # fmt: skip
    ids = table[0].long()

    def gather() -> tuple[torch.Tensor, torch.Tensor]:
        rows = kv.view(2, need + 1, -1).index_select(1, ids).view(2, -1, kv_heads, dim)
        return rows[0, :total].transpose(0, 1), rows[1, :total].transpose(0, 1)

    ms = do_bench(gather, warmup=25, rep=100, return_mode="median")
    print(f"history {hist}: gather K/V to contiguous: {ms * 1e3:7.1f} us")
    k, v = gather()
    k, v = k.contiguous()[None], v.contiguous()[None]  # [1, kv_heads, total, dim]
    qh = q.transpose(0, 1)[None]  # [1, heads, new, dim]
    ke, ve = k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)
    cases = {
        "flash, no mask (dense FLOPs)": (SDPBackend.FLASH_ATTENTION, None, ke, ve, dense),
        "efficient, causal lower right": (
            SDPBackend.EFFICIENT_ATTENTION, causal_lower_right(new, total), ke, ve, flops),
        "cudnn, causal lower right": (
            SDPBackend.CUDNN_ATTENTION, causal_lower_right(new, total), ke, ve, flops),
        "flash, causal lower right": (
            SDPBackend.FLASH_ATTENTION, causal_lower_right(new, total), ke, ve, flops),
    }  # fmt: skip
    for name, (backend, mask, kk, vv, f) in cases.items():

        def sdpa(backend=backend, mask=mask, kk=kk, vv=vv, qh=qh) -> torch.Tensor:
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qh, kk, vv, attn_mask=mask)

        try:
            ms = do_bench(sdpa, warmup=25, rep=100, return_mode="median")
        except Exception as exc:  # a backend that refuses this shape or mask
            print(f"history {hist}: sdpa {name}: {type(exc).__name__} {str(exc)[:120]}")
            continue
        print(f"history {hist}: sdpa {name}: {ms * 1e3:7.1f} us, {f / ms / 1e9:5.0f} TFLOP/s",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
