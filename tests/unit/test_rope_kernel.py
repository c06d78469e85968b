"""The fused rotary kernel (``rope_qk``) against its torch definition, every element, and
its K/V write against the torch backend's: on the GPU when there is one, else under
Triton's CPU interpreter in a subprocess (the interpreter is chosen when triton is
imported)."""

from __future__ import annotations

import textwrap

import torch

from tests.unit.interpreted import run_interpreted

CHECK = textwrap.dedent(
    """
    import torch
    from pagedllm.kernels.fused_ops import rope_qk

    def reference(qkv, nq, nkv, cache, pos, norm, eps):
        x = qkv.float().clone()
        heads = x[:, : nq + nkv]
        if norm is not None:
            w = torch.cat([norm[0].expand(nq, -1), norm[1].expand(nkv, -1)]).float()
            inv = torch.rsqrt(heads.pow(2).mean(-1, keepdim=True) + eps)
            heads = (heads * inv * w).to(qkv.dtype).float()
        half = x.shape[-1] // 2
        cos, sin = cache[pos, :half].float()[:, None], cache[pos, half:].float()[:, None]
        x1, x2 = heads[..., :half], heads[..., half:]
        x[:, : nq + nkv] = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
        return x.to(qkv.dtype)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    # (q heads, kv heads, head dim): llama-8b's group, a count that leaves a partial group
    # of 8 heads (12 + 2 = 14), Qwen3's norm
    for nq, nkv, dim, norm in [(32, 8, 128, False), (12, 2, 64, False), (4, 2, 128, True)]:
        for dtype in (torch.float32, torch.bfloat16):
            tokens = 5
            qkv = torch.randn(tokens, nq + 2 * nkv, dim, device=device).to(dtype)
            cache = torch.randn(64, dim, device=device)
            pos = torch.tensor([0, 3, 63, 7, 7], device=device)
            w = torch.randn(2, dim, device=device).to(dtype) if norm else None
            want = reference(qkv, nq, nkv, cache, pos, w, 1e-6)
            rope_qk(qkv, nq, nkv, cache, pos, w, 1e-6)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(qkv, want, rtol=tol, atol=tol)
            # the v heads are left as they were
            assert torch.equal(qkv[:, nq + nkv :], want[:, nq + nkv :])
    print("ROPE_OK")
    """
)


def test_rope_qk_matches_its_definition() -> None:
    if torch.cuda.is_available():
        exec(compile(CHECK, "rope_check", "exec"), {})
        return
    run_interpreted(CHECK, "ROPE_OK", timeout=300)


WRITE_CHECK = textwrap.dedent(
    """
    import torch
    from pagedllm.attention.metadata import KVWrite
    from pagedllm.attention.torch_backend import write_kv_torch
    from pagedllm.kernels.fused_ops import rope_qk, write_kv

    def swapped(kernel):  # write_kv_torch's argument order
        return lambda cache, slots, k, v, scale: kernel(k, v, cache, slots, scale)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    slots = torch.tensor([5, 0, 31, 9, 2], device=device)  # of 2 blocks x 16, some untouched
    # a group of 8 heads holding only k heads (32 + 8), one holding q and k heads (12 + 2),
    # q/k norms first (4 + 2)
    for nq, nkv, dim, norm in [(32, 8, 128, False), (12, 2, 64, False), (4, 2, 128, True)]:
        for dtype, cache_dtype in [(torch.bfloat16, torch.bfloat16),
                                   (torch.float32, torch.float32),
                                   (torch.bfloat16, torch.float8_e4m3fn)]:
            qkv = (torch.randn(5, nq + 2 * nkv, dim, device=device) * 4).to(dtype)
            table = torch.randn(64, dim, device=device)
            pos = torch.tensor([0, 3, 63, 7, 7], device=device)
            w = torch.randn(2, dim, device=device).to(dtype) if norm else None
            scale = torch.tensor([0.5, 2.0], device=device)
            cache = torch.randn(2, 2, 16, nkv, dim, device=device).to(cache_dtype)
            want_cache = cache.clone()
            rotated = qkv.clone()
            rope_qk(rotated, nq, nkv, table, pos, w, 1e-6)
            rope_qk(qkv, nq, nkv, table, pos, w, 1e-6, KVWrite(cache, slots, scale))
            assert torch.equal(qkv, rotated)  # the rotation is the same, written in place
            k, v = rotated[:, nq : nq + nkv], rotated[:, nq + nkv :]
            # FP8: as write_kv, the kernel that tests/gpu/test_fp8.py holds to the torch
            # backend's bytes (the interpreter rounds to FP8 unlike torch, alike in both)
            write = write_kv_torch if cache_dtype == dtype else swapped(write_kv)
            write(want_cache, slots, k, v, scale)
            assert torch.equal(cache.view(torch.uint8), want_cache.view(torch.uint8)), (
                nq, nkv, cache_dtype)
    print("WRITE_OK")
    """
)


def test_rope_qk_writes_kv_as_the_torch_backend_does() -> None:
    """Every byte of the cache: the rotated k heads and the v heads at their slots (FP8
    quantized by K's and V's scales), the other slots untouched."""
    if torch.cuda.is_available():
        exec(compile(WRITE_CHECK, "rope_write_check", "exec"), {})
        return
    run_interpreted(WRITE_CHECK, "WRITE_OK", timeout=300)
