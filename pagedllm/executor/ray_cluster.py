"""The ``ray`` backend's connection to a Ray cluster (Ray is an optional extra:
``pip install 'pagedllm[ray]'``)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from pagedllm.logger import init_logger

logger = init_logger(__name__)

MISSING_RAY = (
    "distributed_executor_backend='ray' needs Ray, which is not installed: "
    "pip install 'pagedllm[ray]' (on every node of the cluster), or use the default 'mp' "
    "backend on one machine."
)


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(MISSING_RAY) from exc
    return ray


def connect(ray: ModuleType) -> bool:
    """Join a Ray cluster unless this process already has: the one at RAY_ADDRESS, else the
    one `ray start` made on this machine, else a new local instance (Ray's own order for
    ``ray.init()``). Returns whether this call connected, so the caller disconnects (and a
    local instance it started stops) when it is done; a connection the caller's program
    made is left to it."""
    if ray.is_initialized():
        return False
    ray.init()
    resources = ray.cluster_resources()
    logger.info(
        "Ray cluster at %s: %d node(s), %g CPU(s), %g GPU(s)",
        ray.get_runtime_context().gcs_address, len([n for n in ray.nodes() if n["Alive"]]),
        resources.get("CPU", 0), resources.get("GPU", 0),
    )  # fmt: skip
    return True
