"""``pagedllm.v1.metrics``: re-exports for code written against ``vllm.v1.metrics``."""
