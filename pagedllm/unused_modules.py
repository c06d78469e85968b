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

Every config module's validators import ``transformers.activations``, which takes one class
decorator from transformers' hub-kernel integration, and that module imports the checkpoint
conversion machinery and with it ``torch.distributed.tensor`` and sympy: ~0.85 s of the
engine process's ~3 s of imports on a 2-core CPU (transformers 5.17 and 5.25 alike). When
the ``kernels`` package is absent transformers itself defines the decorator to return the
class unchanged; the engine process never builds transformers' layers, so while it imports
the config modules it is given that definition (``hub_kernels_stubbed``) instead of the
module.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# Never imported by pagedllm; transformers imports them only for features pagedllm does
# not use (image processing, assisted generation).
UNUSED_LIBRARIES = ("torchvision", "sklearn")
# transformers' model-class registry: imported by some versions' config docstrings.
TRANSFORMERS_MODELS = "transformers.models.auto.modeling_auto"


# transformers' hub-kernel integration (see the module's docstring)
HUB_KERNELS = "transformers.integrations.hub_kernels"
HUB_KERNEL_DECORATORS = (
    "use_kernel_forward_from_hub", "use_kernelized_func", "use_kernel_func_from_hub",
)  # fmt: skip


def _unchanged(*args: object, **kwargs: object) -> Callable[[T], T]:
    """A hub-kernel decorator as transformers defines it without ``kernels``."""
    return lambda cls: cls


_ABSENT = object()  # an attribute a package does not have


@contextlib.contextmanager
def _standing_in(name: str, value: types.ModuleType | None) -> Iterator[None]:
    """Within the block, ``sys.modules[name]`` is ``value`` (None: the import fails with
    ImportError), unless the module is imported already; afterwards the entry, and an
    attribute a lazy parent package kept of it, go if they are still ``value``, so the real
    module imports as usual."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = value  # type: ignore[assignment]
    try:
        yield
    finally:
        if name in sys.modules and sys.modules[name] is value:
            del sys.modules[name]
        package, _, child = name.rpartition(".")
        parent = sys.modules.get(package)
        if parent is not None and parent.__dict__.get(child, _ABSENT) is value:
            delattr(parent, child)


def hub_kernels_stubbed() -> contextlib.AbstractContextManager[None]:
    """Within the block, ``HUB_KERNELS`` (unless imported already) is a module holding only
    its decorators, each returning the class unchanged; afterwards the real module imports
    as usual. A transformers version that wants more of it there fails that import with
    ImportError: the caller imports again after the block."""
    stub = types.ModuleType(HUB_KERNELS, "pagedllm: the decorators only (hub_kernels_stubbed)")
    for name in HUB_KERNEL_DECORATORS:
        setattr(stub, name, _unchanged)
    return _standing_in(HUB_KERNELS, stub)


def hide_unused_libraries() -> None:
    """Make ``UNUSED_LIBRARIES`` look absent in this process, before transformers is
    imported. A None entry in ``sys.modules`` makes ``importlib.util.find_spec``
    (transformers' availability checks) return None and a direct import fail with
    ImportError. One already imported stays."""
    for name in UNUSED_LIBRARIES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]


def transformers_models_hidden() -> contextlib.AbstractContextManager[None]:
    """Within the block, importing transformers' model-class registry fails with
    ImportError (unless it is imported already); afterwards it imports as usual. A config
    class defined in the block keeps a docstring without its model's name; a transformers
    version that cannot define it so raises ImportError, and the caller tries again after
    the block."""
    return _standing_in(TRANSFORMERS_MODELS, None)


def without_transformers_models(load: Callable[[], T]) -> T:
    """``load()`` with transformers' model registry hidden; again with it importable if a
    transformers version needs it there (ImportError), or if the error was ``load``'s own
    (which then raises again)."""
    try:
        with transformers_models_hidden():
            return load()
    except ImportError:
        return load()
