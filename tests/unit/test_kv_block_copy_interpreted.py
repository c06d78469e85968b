"""The host tier's block-copy kernel (``kernels/kv_block_copy``) under Triton's interpreter in
a subprocess, laid out as ``worker/host_kv_cache`` lays it out: scattered blocks saved from
each layer of a device cache into host slots and loaded back into other blocks, bit for bit,
for a wide piece (int64 elements, a piece over two items, the second masked) and pieces
only 2- and 1-byte types divide; the loads back with a grid of four programs dealt several
items each (the last round partly idle); blocks and slots not named are untouched."""

from __future__ import annotations

import textwrap

from tests.unit.interpreted import run_interpreted

CHECK = textwrap.dedent(
    """
    import torch
    from pagedllm.kernels import kv_block_copy as kbc
    from pagedllm.worker.host_kv_cache import widest_view
    from tests.unit.interpreted import assert_refused

    gen = torch.Generator().manual_seed(0)
    # (cache dtype, block size, heads, head dim): piece bytes 24,576 (3,072 int64: a chunk of
    # 2,048 elements and a masked one), 6 (int16), 3 (uint8).
    for dtype, block, heads, dim in [
        (torch.bfloat16, 16, 6, 128), (torch.float16, 1, 1, 3), (torch.float8_e4m3fn, 1, 3, 1),
    ]:
        layers = [
            torch.randn(2, 9, block, heads, dim, generator=gen).to(dtype) for _ in range(3)
        ]
        before = [layer.clone() for layer in layers]
        host = torch.zeros(6, len(layers), 2, block, heads, dim, dtype=dtype).view(torch.uint8)
        piece_bytes = host[0, 0, 0].numel()
        host_view = widest_view(host, piece_bytes)
        views = [widest_view(layer, piece_bytes) for layer in layers]
        piece = host_view[0, 0, 0].numel()
        host_strides = (host_view.stride(2), host_view.stride(0))
        out_pairs = [(7, 4), (2, 0), (5, 5)]  # (device block, host slot)
        index = lambda ids: torch.tensor(ids, dtype=torch.int64)
        for i, view in enumerate(views):
            kbc.copy_blocks(
                view, host_view[:, i], index([b for b, _ in out_pairs]),
                index([s for _, s in out_pairs]), (view.stride(0), view.stride(1)),
                host_strides, piece,
            )
        raw = host.view(6, len(layers), 2, -1)
        for i, layer in enumerate(before):
            flat = layer.view(torch.uint8).reshape(2, 9, -1)
            for b, s in out_pairs:
                assert torch.equal(raw[s, i], flat[:, b]), (dtype, i, b, s)
        assert not raw[[1, 2, 3]].any(), "a slot not named was written"
        in_pairs = [(5, 1), (4, 8), (0, 3)]  # (host slot, device block)
        for i, view in enumerate(views):
            kbc.copy_blocks(
                host_view[:, i], view, index([s for s, _ in in_pairs]),
                index([b for _, b in in_pairs]), host_strides,
                (view.stride(0), view.stride(1)), piece, max_programs=4,
            )
        for layer, old in zip(layers, before):
            got, want = layer.view(torch.uint8), old.view(torch.uint8)
            for target, source in [(1, 5), (8, 7), (3, 2)]:
                assert torch.equal(got[:, target], want[:, source]), (dtype, target)
            for untouched in (0, 2, 4, 5, 6, 7):
                assert torch.equal(got[:, untouched], want[:, untouched]), (dtype, untouched)
    a = torch.zeros(4, dtype=torch.int64)
    assert_refused(lambda: kbc.copy_blocks(a, a.view(torch.int32), a, a, (1, 1), (1, 1), 1),
                   "view both as one type")
    assert_refused(lambda: kbc.copy_blocks(a, a, a, a[:2], (1, 1), (1, 1), 1), "as many")
    print("KV_BLOCK_COPY_OK")
    """
)


def test_block_copy_kernel_round_trip_interpreted() -> None:
    run_interpreted(CHECK, "KV_BLOCK_COPY_OK", timeout=300)
