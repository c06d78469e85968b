"""vLLM V1 import paths (``vllm.v1...``), as thin re-exports."""
