"""What 4-bit weights would give CPU single-stream decode (issue 21), before building it.

The bundled SmolLM2 is loaded as served (its Q4_1 GGUF dequantized to ``--dtype``), then
each linear layer (and with ``--lm-head`` the tied LM head) is requantized the way Q4_1
stores it — groups of 32 along the input, a scale and a minimum per group, 4-bit codes —
and packed for torch's int4 weight-only CPU kernel (``_weight_int4pack_mm_for_cpu``),
which then serves every product of up to ``--max-rows`` rows. The weights stay in memory
beside the packed copy: this measures speed, not memory. Greedy chat, 128 tokens, best of 3.

    python benchmarks/cpu_int4_probe.py --dtype bfloat16 [--int4] [--lm-head]

Not used by the engine: it names the gain the GGUF-as-stored path (issue 21) can expect.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
os.environ["PAGEDLLM_ENABLE_MULTIPROCESSING"] = "0"  # the model is patched in this process

GROUP = 32  # Q4_0 / Q4_1 block length


def pack_q4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] -> (int4 codes packed for the CPU kernel, [K / 32, N, 2] scales and zeros in
    the weight's dtype), with ``w = (code - 8) * scale + zero`` per group: Q4_1's
    ``code * d + m`` with zero = m + 8 d."""
    n, k = weight.shape
    groups = weight.float().view(n, k // GROUP, GROUP)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-8)
    codes = ((groups - low) / scale).round().clamp(0, 15).to(torch.int32).view(n, k)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    pairs = torch.stack([scale.squeeze(-1), (low + 8 * scale).squeeze(-1)], -1)
    return packed, pairs.transpose(0, 1).contiguous().to(weight.dtype)


def serve_in_int4(layer: torch.nn.Module, max_rows: int, logits: bool) -> None:
    """Route the layer's products of up to ``max_rows`` rows through the int4 kernel."""
    packed, scales = pack_q4(layer.weight.data)
    original = layer.forward

    def forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > max_rows:
            return original(x)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), packed, GROUP, scales)
        if getattr(self, "bias", None) is not None:
            y = y + self.bias
        return y.float() if logits else y

    layer.forward = types.MethodType(forward, layer)


def pack_model(max_rows: int, lm_head: bool) -> int:
    """Serve the in-process engine's linear layers (and the LM head) in int4; how many."""
    from pagedllm.model.decoder import CausalLM
    from pagedllm.model.layers.embedding import LMHead
    from pagedllm.model.layers.linear import Linear

    model = next(o for o in gc.get_objects() if isinstance(o, CausalLM))
    packed = 0
    for module in model.modules():
        head = isinstance(module, LMHead)
        if (isinstance(module, Linear) and module.in_features % GROUP == 0) or (head and lm_head):
            serve_in_int4(module, max_rows, logits=head)
            packed += 1
    return packed


def quality(dtype: str, int4: bool, lm_head: bool) -> None:
    """Top-1 agreement and perplexity rise against float32, as the FP8 quality test reads them."""
    from tests.model.teacher_forcing import engine, score, score_engine

    reference = score()
    llm = engine(dtype=dtype)
    packed = pack_model(1 << 20, lm_head) if int4 else 0
    scores = score_engine(llm)
    print(f"dtype {dtype}, {packed} layers in int4: top-1 agreement with float32 "
          f"{scores.agreement(reference):.1%}, perplexity {scores.perplexity:.3f} against "
          f"{reference.perplexity:.3f} ({scores.perplexity_rise(reference):+.2%})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--int4", action="store_true")
    parser.add_argument("--lm-head", action="store_true", help="the LM head in 4 bits too")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="products of up to this many rows in int4 (default 4)")  # fmt: skip
    parser.add_argument("--quality", action="store_true",
                        help="teacher-forced top-1 agreement and perplexity against float32 "
                             "(tests/model/teacher_forcing.py), every product in int4")  # fmt: skip
    args = parser.parse_args()
    if args.lm_head and not args.int4:
        parser.error("--lm-head puts the LM head in int4 beside the linear layers: it needs --int4")
    if args.max_rows is not None and not args.int4:
        parser.error("--max-rows routes products to int4: it needs --int4")
    if args.max_rows is not None and args.quality:
        parser.error("--quality scores every product in int4: --max-rows does not apply")
    if args.quality:
        quality(args.dtype, args.int4, args.lm_head)
        return
    from pagedllm import LLM, SamplingParams

    llm = LLM(model="HuggingFaceTB/SmolLM2-135M-Instruct", dtype=args.dtype)
    packed = pack_model(args.max_rows or 4, args.lm_head) if args.int4 else 0
    chat = [{"role": "user", "content": "Tell me about the history of Paris."}]
    params = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
    llm.chat(chat, SamplingParams(max_tokens=8), use_tqdm=False)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        out = llm.chat(chat, params, use_tqdm=False)[0].outputs[0]
        best = max(best, len(out.token_ids) / (time.perf_counter() - start))
    print(f"dtype {args.dtype}, {packed} layers in int4, threads {torch.get_num_threads()}: "
          f"{best:.1f} tok/s; reply {out.text[:60]!r}")  # fmt: skip


if __name__ == "__main__":
    main()
