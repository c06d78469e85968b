"""Chained block hashes: equal token prefixes (and salts) map to equal hash chains.

hash(block i) = sha256(hash(block i-1) || token ids of block i || salt)

SHA-256 rather than Python's ``hash``: a collision would silently hand one request another
request's KV, so the hash must not collide in practice, and must not vary between processes.
"""

from __future__ import annotations

import hashlib
from array import array

from pagedllm.core.request import Request

_ROOT = b"pagedllm-root"


def hash_block(parent: bytes | None, token_ids: list[int], salt: str | None) -> bytes:
    """Hash one full block given its parent's hash (None for the first block)."""
    h = hashlib.sha256(parent if parent is not None else _ROOT)
    h.update(array("q", token_ids).tobytes())
    if salt is not None:
        h.update(b"\x00salt\x00")
        h.update(salt.encode("utf-8"))
    return h.digest()


def update_block_hashes(request: Request, block_size: int) -> list[bytes]:
    """Extend ``request.block_hashes`` to cover every full block of its known tokens.

    Only the first block carries the salt: the chain passes it on to every later block.
    """
    hashes = request.block_hashes
    num_full = request.num_tokens // block_size
    tokens = request.all_token_ids
    for i in range(len(hashes), num_full):
        parent = hashes[i - 1] if i > 0 else None
        salt = request.cache_salt if i == 0 else None
        hashes.append(hash_block(parent, tokens[i * block_size : (i + 1) * block_size], salt))
    return hashes
