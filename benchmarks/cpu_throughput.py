"""CPU throughput: pagedllm against transformers' batched ``generate``, same run, same weights.

The bundled SmolLM2-135M-Instruct (GGUF: pagedllm computes on its Q4_1 / Q8_0 blocks as
stored where its CPU kernels are built, transformers dequantizes to float32), N chat prompts,
M new tokens each (end-of-sequence ignored so both produce exactly N x M tokens), greedy.
Prints one table and appends a record to benchmarks/RESULTS.md.

    python benchmarks/cpu_throughput.py [--num-prompts 32] [--output-len 128] [--no-record]

``--serving`` measures pagedllm alone the way a server is felt, at a given ``--dtype`` and
``--cpu-threads``: one stream of 128 tokens, 32 prompts x 64 tokens, and the time to first
token of a 500-token prompt (the best of 3, each a new prompt so no prefix cache hit);
``--llama-cpp`` adds llama-cpp-python on the same GGUF file (``pip install llama-cpp-python``).

    python benchmarks/cpu_throughput.py --serving --dtype auto --cpu-threads 2 --llama-cpp
"""

from __future__ import annotations

import argparse
import time

import torch
from record import append_record, device_name

TOPICS = ["cats", "the sea", "bread", "trains", "rain", "chess", "bees", "winter"]


def make_conversations(n: int) -> list[list[dict[str, str]]]:
    return [
        [
            {
                "role": "user",
                "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}" + "!" * (i % 5),
            }
        ]
        for i in range(n)
    ]


def run_pagedllm(conversations, output_len: int, **engine_kwargs) -> tuple[float, int]:
    from pagedllm import LLM

    llm = LLM(kv_cache_memory_bytes="512M", max_model_len=2048, **engine_kwargs)
    return timed_chat(llm, conversations, output_len)


def timed_chat(llm, conversations, output_len: int) -> tuple[float, int]:
    from pagedllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.chat(conversations[:2], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(o.outputs[0].token_ids) for o in outputs)


def run_transformers(conversations, output_len: int) -> tuple[float, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pagedllm.model_files import bundled_gguf_path

    path = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        model.generate(
            **tokenizer(texts[:2], return_tensors="pt", padding=True), max_new_tokens=4, **kwargs
        )
        start = time.perf_counter()
        out = model.generate(
            **batch, max_new_tokens=output_len, min_new_tokens=output_len, **kwargs
        )
        elapsed = time.perf_counter() - start
    return elapsed, int((out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0])


def time_to_first_token(llm, prompt_len: int, tries: int = 3) -> float:
    """Best of ``tries`` seconds to the first token of a ``prompt_len``-token prompt; each try
    starts with a different token so the prefix cache never answers it."""
    from pagedllm import SamplingParams

    ids = llm.get_tokenizer()(" ".join(TOPICS * 200))["input_ids"]
    best = float("inf")
    for i in range(tries):
        prompt = {"prompt_token_ids": [ids[i], *ids[tries : tries + prompt_len - 1]]}
        start = time.perf_counter()
        llm.generate(prompt, SamplingParams(max_tokens=1), use_tqdm=False)
        best = min(best, time.perf_counter() - start)
    return best


def serving(dtype: str, cpu_threads: int | None) -> list[str]:
    """pagedllm alone: single stream, 32 prompts, time to first token (a markdown table)."""
    from pagedllm import LLM

    llm = LLM(
        kv_cache_memory_bytes="512M", max_model_len=2048, dtype=dtype, cpu_threads=cpu_threads
    )
    single, single_tokens = timed_chat(llm, make_conversations(1), 128)
    batch, batch_tokens = timed_chat(llm, make_conversations(32), 64)
    ttft = time_to_first_token(llm, 500)
    chosen = llm.llm_engine.config.model_config.dtype
    return [
        "| dtype asked | dtype run | threads | single stream tok/s | 32 prompts tok/s "
        "| TTFT 500 tokens |",
        "|---|---|---|---|---|---|",
        f"| {dtype} | {chosen} | {cpu_threads or 'default'} | {single_tokens / single:.1f} "
        f"| {batch_tokens / batch:.1f} | {ttft * 1000:.0f} ms |",
    ]


def llama_cpp_serving(threads: int) -> list[str]:
    """llama-cpp-python on the same GGUF file, the same figures as ``serving``: one stream of
    128 tokens and the best-of-3 time to first token of a 500-token prompt through its
    high-level API (each try starts with another token: its prompt cache reuses a common
    prefix), and 32 prompts x 64 tokens decoded 8 at a time through ``llama_batch`` (8
    sequences in one ``llama_decode``, as its server's parallel slots run them)."""
    llm = _llama(threads, sequences=1)
    no_eos = {llm.token_eos(): float("-inf")}
    messages = make_conversations(1)[0]
    llm.create_chat_completion(messages, max_tokens=4, temperature=0.0)  # warm-up
    start = time.perf_counter()
    out = llm.create_chat_completion(messages, max_tokens=128, temperature=0.0,
                                     logit_bias=no_eos)  # fmt: skip
    single = out["usage"]["completion_tokens"] / (time.perf_counter() - start)
    ids = llm.tokenize(" ".join(TOPICS * 200).encode(), add_bos=False)
    ttft = float("inf")
    for i in range(3):
        prompt = [ids[i], *ids[3 : 3 + 499]]
        start = time.perf_counter()
        llm.create_completion(prompt, max_tokens=1, temperature=0.0)
        ttft = min(ttft, time.perf_counter() - start)
    del llm
    batch_tokens, batch_s = _llama_cpp_batched(_llama(threads, sequences=8), 32, 64, 8)
    return [
        f"| llama-cpp-python (same GGUF, Q4_1 as stored) | - | {threads} | {single:.1f} "
        f"| {batch_tokens / batch_s:.1f} (8 at a time) | {ttft * 1000:.0f} ms |",
    ]


def _llama(threads: int, sequences: int):  # -> llama_cpp.Llama (an optional import)
    """The bundled GGUF in llama-cpp-python, ``sequences`` sequences per context.

    ggml's extra buffer types (here the AMX repack of the Q4_1 weights, its default on a CPU
    with AMX) crash this build in the first decode (segmentation fault, 0.3.36 built from
    source on this machine); without them ggml runs its plain CPU kernels. The high-level
    constructor takes neither that nor the sequence count: both are set in its defaults."""
    import llama_cpp.llama_cpp as bindings
    from llama_cpp import Llama

    from pagedllm.model_files import bundled_gguf_path

    model_defaults = bindings.llama_model_default_params
    context_defaults = bindings.llama_context_default_params

    def model_params():
        params = model_defaults()
        params.use_extra_bufts = False
        return params

    def context_params():
        params = context_defaults()
        params.n_seq_max = sequences
        return params

    bindings.llama_model_default_params = model_params
    bindings.llama_context_default_params = context_params
    try:
        return Llama(model_path=str(bundled_gguf_path()), n_ctx=4096, n_threads=threads,
                     n_threads_batch=threads, n_batch=512, verbose=False)  # fmt: skip
    finally:
        bindings.llama_model_default_params = model_defaults
        bindings.llama_context_default_params = context_defaults


def _llama_cpp_batched(llm, prompts: int, output_len: int, slots: int) -> tuple[int, float]:
    """Greedy decoding of ``prompts`` chat prompts, ``slots`` sequences per ``llama_decode``
    (sequence ids 0 .. slots - 1 reused per wave); returns (tokens, seconds)."""
    import llama_cpp
    import numpy as np

    ctx, vocab = llm.ctx, llm.n_vocab()
    chats = [llm.tokenize(_chat_text(c).encode(), add_bos=False, special=True)
             for c in make_conversations(prompts)]  # fmt: skip
    batch = llama_cpp.llama_batch_init(4096, 0, slots)
    memory = llama_cpp.llama_get_memory(ctx)
    tokens = 0
    start = time.perf_counter()
    for wave in range(0, prompts, slots):
        group = chats[wave : wave + slots]
        llama_cpp.llama_memory_clear(memory, True)
        _fill(batch, [(seq, pos, tok, pos == len(p) - 1) for seq, p in enumerate(group)
                      for pos, tok in enumerate(p)])  # fmt: skip
        llama_cpp.llama_decode(ctx, batch)
        rows = list(range(batch.n_tokens))
        last = [i for i in rows if batch.logits[i]]
        lengths = [len(p) for p in group]
        for _ in range(output_len):
            next_ids = [
                int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row),
                                                    shape=(vocab,))))
                for row in last
            ]  # fmt: skip
            tokens += len(next_ids)
            _fill(batch, [(seq, lengths[seq], tok, True) for seq, tok in enumerate(next_ids)])
            lengths = [n + 1 for n in lengths]
            llama_cpp.llama_decode(ctx, batch)
            last = list(range(len(group)))
    elapsed = time.perf_counter() - start
    llama_cpp.llama_batch_free(batch)
    return tokens, elapsed


def _chat_text(conversation: list[dict[str, str]]) -> str:
    """SmolLM2's chat template (ChatML) for one user message and the assistant's turn."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conversation)
    return text + "<|im_start|>assistant\n"


def _fill(batch, entries: list[tuple[int, int, int, bool]]) -> None:
    """(sequence, position, token, wants logits) rows into a ``llama_batch``."""
    batch.n_tokens = len(entries)
    for i, (seq, pos, token, logits) in enumerate(entries):
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits


def _weights() -> str:
    """How pagedllm held the GGUF's weights in this run (``gguf_blocks.keeps_blocks``)."""
    from pagedllm import envs
    from pagedllm.kernels import cpu_extension

    if not envs.cpu_gguf_kernels():
        return "dequantized (PAGEDLLM_CPU_GGUF_KERNELS=0)"
    reason = cpu_extension.unavailable_reason()
    return "as stored, C++ kernels" if reason is None else f"dequantized: {reason}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--serving", action="store_true", help="pagedllm alone, serving figures")
    parser.add_argument("--dtype", default="auto", help="pagedllm's --dtype (with --serving)")
    parser.add_argument("--cpu-threads", type=int, default=None, help="pagedllm's --cpu-threads")
    parser.add_argument("--llama-cpp", action="store_true",
                        help="with --serving: llama-cpp-python on the same GGUF too")  # fmt: skip
    args = parser.parse_args()
    if args.llama_cpp and not args.serving:
        parser.error("--llama-cpp compares serving figures: it needs --serving")
    if args.serving:
        table = serving(args.dtype, args.cpu_threads)
        if args.llama_cpp:  # the same process and minutes: one machine state for both
            table += llama_cpp_serving(args.cpu_threads or torch.get_num_threads())
        print("\n".join(table))
        if not args.no_record:
            workload = (
                f"SmolLM2-135M-Instruct (GGUF Q4_1 {_weights()}), 1 stream x 128 tokens, "
                "32 chat prompts x 64 tokens, greedy, eos ignored; TTFT of a 500-token prompt"
            )
            append_record("CPU serving", device_name(), workload, table)
        return
    conversations = make_conversations(args.num_prompts)
    rows = []
    for name, fn in (("pagedllm", run_pagedllm), ("transformers generate", run_transformers)):
        elapsed, tokens = fn(conversations, args.output_len)
        rows.append((name, elapsed, tokens, tokens / elapsed))
    ratio = rows[0][3] / rows[1][3]
    table = ["| engine | seconds | output tokens | output tokens/s |", "|---|---|---|---|"]
    table += [f"| {n} | {e:.2f} | {t} | {r:.1f} |" for n, e, t, r in rows]
    table.append(f"\npagedllm / transformers: **{ratio:.2f}x**")
    print("\n".join(table))
    if not args.no_record:
        workload = (
            f"SmolLM2-135M-Instruct (GGUF Q4_1 {_weights()}), {args.num_prompts} chat "
            f"prompts, {args.output_len} new tokens each, greedy, eos ignored"
        )
        append_record("CPU throughput", device_name(), workload, table)


if __name__ == "__main__":
    main()
