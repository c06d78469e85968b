"""Libraries pagedllm's own processes never use, kept from being imported there.

transformers imports torchvision whenever it is installed (as in every vLLM environment),
for image and video processing, which pagedllm never does; on the H200 image torchvision
pulled in ``torch._dynamo``: 4.7 s of the 9.7 s the engine process spent importing (RESULTS:
"Where the engine process's imports go on the H200"). scikit-learn likewise, for assisted
generation's candidate generator (and scipy with it). Only processes pagedllm owns hide
them (the engine process, the ``pagedllm`` command): in a user's process (``LLM``) their own
code may need them.

Some transformers versions (5.17, the H200 image's) build a config class's docstring from
the model classes: defining ``LlamaConfig`` imports ``modeling_auto`` and with it the
generation utilities, ``torch._dynamo`` and scikit-learn, ~2.9 s of the engine process's
path to its first step there. ``transformers_models_hidden`` keeps that module out while a
configuration loads the model's config (``config._load_hf_config``, in every process) and
while the engine process unpickles the front end's configuration (which defines the config
class if the build ahead did not): transformers skips the docstring's model name when the
import fails, and a version that cannot is loaded again without it
(``without_transformers_models``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

# Never imported by pagedllm; transformers imports them only for features pagedllm does
# not use (image processing, assisted generation).
UNUSED_LIBRARIES = ("torchvision", "sklearn")
# transformers' model-class registry: imported by some versions' config docstrings.
TRANSFORMERS_MODELS = "transformers.models.auto.modeling_auto"


def hide_unused_libraries() -> None:
    """Make ``UNUSED_LIBRARIES`` look absent in this process, before transformers is
    imported. A None entry in ``sys.modules`` makes ``importlib.util.find_spec``
    (transformers' availability checks) return None and a direct import fail with
    ImportError. One already imported stays."""
    for name in UNUSED_LIBRARIES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]


@contextmanager
def transformers_models_hidden() -> Iterator[None]:
    """Within the block, importing transformers' model-class registry fails with
    ImportError (unless it is imported already); afterwards it imports as usual. A config
    class defined in the block keeps a docstring without its model's name; a transformers
    version that cannot define it so raises ImportError, and the caller tries again after
    the block."""
    if TRANSFORMERS_MODELS in sys.modules:
        yield
        return
    sys.modules[TRANSFORMERS_MODELS] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if TRANSFORMERS_MODELS in sys.modules and sys.modules[TRANSFORMERS_MODELS] is None:
            del sys.modules[TRANSFORMERS_MODELS]


def without_transformers_models(load: Callable[[], T]) -> T:
    """``load()`` with transformers' model registry hidden; again with it importable if a
    transformers version needs it there (ImportError), or if the error was ``load``'s own
    (which then raises again)."""
    try:
        with transformers_models_hidden():
            return load()
    except ImportError:
        return load()
