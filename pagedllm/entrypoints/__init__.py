"""User entry points: the offline ``LLM`` API and the ``pagedllm`` command line."""
