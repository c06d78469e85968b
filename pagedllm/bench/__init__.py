"""``pagedllm bench serve``: a client that benchmarks any OpenAI-compatible server (pagedllm's
or vLLM's) with vLLM's flag names, summary lines and result JSON."""
