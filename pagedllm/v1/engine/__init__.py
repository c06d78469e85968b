"""``pagedllm.v1.engine``: re-exports for code written against ``vllm.v1.engine``."""
