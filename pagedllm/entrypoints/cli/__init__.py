"""The ``pagedllm`` command: one subcommand per module."""
