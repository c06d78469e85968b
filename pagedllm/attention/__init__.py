"""Attention over the paged KV cache.

KV cache layout, chosen once for every backend: one tensor per layer of shape
``[2, num_blocks, block_size, num_kv_heads, head_dim]`` (index 0 = K, 1 = V), so K and V
of a layer are each one contiguous ``[num_blocks, block_size, kv_heads, head_dim]`` tensor.
Token ``t`` of a request lives at ``slot = block_table[t // block_size] * block_size +
t % block_size``. Its dtype is the model's, or FP8 (``value / scale`` per layer for K and
for V; see ``AttentionBackend``).
"""
