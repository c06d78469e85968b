"""Where tensors live: the model runner, KV cache allocation and sizing."""
