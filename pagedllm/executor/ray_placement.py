"""Where the ``ray`` backend's ranks go, as pure functions (no Ray, no torch: tested
without either).

Layout (``distributed.parallel_state``): global rank = pp_rank * tp_size + tp_rank. Each
pipeline stage is one Ray placement group of ``tp_size`` bundles packed strictly onto one
node, so a stage's all-reduces (one per layer) never cross the network; stages may land on
different nodes, where only one activation tensor per step crosses (vLLM's advice: TP
inside a node, PP across nodes). Bundle ``tp_rank`` of group ``pp_rank`` holds that rank.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

STAGE_STRATEGY = "STRICT_PACK"  # a stage's bundles all on one node, or not placed at all

# Environment variables a rank must see as the engine core does. Others are the node's
# own (GLOO_SOCKET_IFNAME names an interface of that node: set it where `ray start` runs),
# and the API key stays on the driver (Ray records runtime environments cluster-wide).
_FORWARDED_PREFIX = "PAGEDLLM_"
_NOT_FORWARDED = frozenset({"PAGEDLLM_API_KEY"})


@dataclass(frozen=True)
class RankSlot:
    rank: int
    stage: int  # pp_rank: which placement group
    bundle: int  # tp_rank: which bundle of it


def rank_slots(tp_size: int, pp_size: int) -> list[RankSlot]:
    """Every rank's placement group and bundle, in rank order."""
    return [
        RankSlot(stage * tp_size + tp_rank, stage, tp_rank)
        for stage in range(pp_size)
        for tp_rank in range(tp_size)
    ]


def stage_bundles(tp_size: int, device: str) -> list[dict[str, float]]:
    """One stage's placement group: a bundle per TP rank, one GPU each on CUDA (the actor
    sees only its own), one CPU each on the CPU (a reservation for Ray's bookkeeping; the
    rank's threads are set from the ranks that share its node, ``ranks_on_same_node``)."""
    return [{resource_name(device): 1.0} for _ in range(tp_size)]


def resource_name(device: str) -> str:
    if device == "cuda":
        return "GPU"
    if device == "cpu":
        return "CPU"
    raise ValueError(f"The ray backend places ranks on 'cpu' or 'cuda', not {device!r}.")


def ranks_on_same_node(node_ids: list[str]) -> list[int]:
    """For each rank (``node_ids`` in rank order), how many ranks share its node."""
    counts = Counter(node_ids)
    return [counts[node] for node in node_ids]


def rendezvous_url(node_ips: list[str], port: int) -> str:
    """torch.distributed's ``tcp://`` rendezvous: rank 0 serves the store, so the address
    is rank 0's node (``node_ips`` in rank order) and a port rank 0 found free there."""
    if not 0 < port < 65536:
        raise ValueError(f"Rendezvous port {port} is outside 1..65535.")
    host = node_ips[0]
    if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The engine core's PAGEDLLM_* settings (log level, threads, attention backend...),
    given to every rank's actor, wherever it runs."""
    return {
        name: value
        for name, value in environ.items()
        if name.startswith(_FORWARDED_PREFIX) and name not in _NOT_FORWARDED
    }
