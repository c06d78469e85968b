"""Sampling as small pure functions over batched tensors (no host syncs inside)."""
