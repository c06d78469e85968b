"""Libraries pagedllm's own processes never use, kept from being imported there.

transformers imports torchvision whenever it is installed (as in every vLLM environment),
for image and video processing, which pagedllm never does; on the H200 image torchvision
pulled in ``torch._dynamo``: 4.7 s of the 9.7 s the engine process spent importing (RESULTS:
"Where the engine process's imports go on the H200"). Only processes pagedllm owns hide it
(the engine process, the ``pagedllm`` command): in a user's process (``LLM``) their own
code may need it.
"""

from __future__ import annotations

import sys


def hide_torchvision() -> None:
    """Make torchvision look absent in this process, before transformers is imported. A
    None entry in ``sys.modules`` makes ``importlib.util.find_spec`` (transformers'
    availability check) return None and a direct import fail with ImportError."""
    if "torchvision" not in sys.modules:
        sys.modules["torchvision"] = None  # type: ignore[assignment]
