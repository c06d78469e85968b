"""GGUF checkpoints: tensors dequantized to float32 by the ``gguf`` package (or kept as
stored, below), renamed to Hugging Face names with its tensor-name map, and un-permuted
where llama.cpp permuted them.

Parsing a GGUF file's metadata with ``GGUFReader`` takes seconds (tens of thousands of
vocabulary entries), so the tensor table (name, type, shape, byte range) is written once
beside the converted config; later loads memory-map the file and read tensors directly.

With tensor or pipeline parallelism (``plan``), a rank skips other stages' tensors and
dequantizes only its rows of a row-sliced tensor (a GGUF row is whole quantization blocks);
a column slice (o_proj, down_proj) is cut after dequantizing the whole tensor.

With ``keep_blocks`` (the CPU, one rank: ``gguf_blocks.keeps_blocks``), a 2-D tensor of a
type the CPU kernels compute on is yielded as ``StoredBlocks``, the file's bytes copied
once into memory the process owns, its rows un-permuted like the dequantized ones.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pagedllm.kernels.gguf_cpu import STORED_TYPES
from pagedllm.model.layers.gguf_blocks import StoredBlocks
from pagedllm.model.sharding import SKIP, Region, ShardPlan

_GGUF_ARCHS = ("llama", "qwen2", "qwen3")
_INDEX_FILE = "gguf_tensors.json"


def iter_gguf_weights(
    path: Path,
    config: Any,
    index_dir: Path,
    plan: ShardPlan | None = None,
    keep_blocks: bool = False,
) -> Iterator[tuple[str, torch.Tensor | StoredBlocks]]:
    import gguf

    assert not (keep_blocks and plan is not None), "stored blocks are for one rank"
    index = _load_index(path, index_dir / _INDEX_FILE)
    arch = index["arch"]
    to_hf = _gguf_to_hf_names(gguf, arch, config.num_hidden_layers)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for entry in index["tensors"]:
        hf_name = to_hf.get(entry["name"])
        if hf_name is None:
            raise ValueError(f"GGUF tensor {entry['name']!r} of {path} has no known counterpart.")
        region = plan.region(hf_name, tuple(entry["shape"])) if plan is not None else None
        if region == SKIP:
            continue
        if keep_blocks and entry["type"] in STORED_TYPES and len(entry["shape"]) == 2:
            weight: torch.Tensor | StoredBlocks = _stored(data, entry)
        else:
            weight = _read(gguf, data, entry, region)
        if arch == "llama":
            weight = _unpermute_llama(hf_name, weight, config)
        yield hf_name, weight


def held_bytes(path: Path, index_dir: Path, element_size: int) -> int:
    """Bytes the model holds once loaded with ``keep_blocks``, known before any weight is
    read (the model's parameters are empty placeholders until then): a 2-D tensor of a
    stored type as the file's bytes, every other tensor dequantized to ``element_size``
    bytes a value (an F16 or Q5_K tensor widens). A merged layer whose shards mix stored
    and other types dequantizes its stored shards too; those are counted as stored."""
    index = _load_index(path, index_dir / _INDEX_FILE)
    return sum(
        e["n_bytes"]
        if e["type"] in STORED_TYPES and len(e["shape"]) == 2
        else math.prod(e["shape"]) * element_size
        for e in index["tensors"]
    )


def _stored(data: np.ndarray, entry: dict[str, Any]) -> StoredBlocks:
    rows, columns = entry["shape"]
    raw = data[entry["offset"] : entry["offset"] + entry["n_bytes"]]
    blocks = torch.from_numpy(np.array(raw).reshape(rows, -1))  # a copy, off the map
    return StoredBlocks(entry["type"], columns, blocks)


def _read(
    gguf: Any, data: np.ndarray, entry: dict[str, Any], region: Region | str | None
) -> torch.Tensor:
    """The tensor, or this rank's region of it (reading only its rows where it can)."""
    if region is None:
        return torch.from_numpy(_dequantize(gguf, data, entry))
    assert isinstance(region, Region)
    shape = entry["shape"]
    whole_rows = len(shape) > 1 or gguf.GGMLQuantizationType(entry["type"]) in (
        gguf.GGMLQuantizationType.F32,
        gguf.GGMLQuantizationType.F16,
    )
    if region.dim == 0 and whole_rows:
        row_bytes = entry["n_bytes"] // shape[0]
        rows = dict(
            entry,
            offset=entry["offset"] + region.start * row_bytes,
            n_bytes=region.length * row_bytes,
            shape=[region.length, *shape[1:]],
        )
        return torch.from_numpy(_dequantize(gguf, data, rows))
    whole = torch.from_numpy(_dequantize(gguf, data, entry))
    return whole.narrow(region.dim, region.start, region.length).contiguous()


def _dequantize(gguf: Any, data: np.ndarray, entry: dict[str, Any]) -> np.ndarray:
    qtype = gguf.GGMLQuantizationType(entry["type"])
    shape = tuple(entry["shape"])  # numpy order: the reverse of GGUF's ne
    raw = data[entry["offset"] : entry["offset"] + entry["n_bytes"]]
    if qtype == gguf.GGMLQuantizationType.F32:
        values = raw.view(np.float32).reshape(shape)
    elif qtype == gguf.GGMLQuantizationType.F16:
        values = raw.view(np.float16).reshape(shape)
    else:
        blocks = raw.reshape(gguf.quant_shape_to_byte_shape(shape, qtype))
        values = gguf.quants.dequantize(blocks, qtype)
    return np.array(values, dtype=np.float32)  # a writable copy, detached from the map


def _load_index(path: Path, index_path: Path) -> dict[str, Any]:
    if index_path.exists():
        return json.loads(index_path.read_text())
    index = _build_index(path)
    # A temporary name of this process's own: ranks loading the same file at once (tensor
    # parallelism) each write a whole index, and the last replace wins with a whole one.
    tmp = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, index_path)
    return index


def _build_index(path: Path) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("general.architecture")
    arch = field.contents() if field is not None else None
    if arch not in _GGUF_ARCHS:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: {_GGUF_ARCHS}.")
    tensors = [
        {
            "name": t.name,
            "type": int(t.tensor_type),
            "shape": [int(d) for d in reversed(t.shape.tolist())],
            "offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
        }
        for t in reader.tensors
    ]
    return {"arch": arch, "tensors": tensors}


def _gguf_to_hf_names(gguf: Any, arch: str, n_layers: int) -> dict[str, str]:
    model_arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    name_map = gguf.get_tensor_name_map(model_arch, n_layers)
    per_layer = [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        *(f"self_attn.{p}_proj.{s}" for p in "qkvo" for s in ("weight", "bias")),
        "self_attn.q_norm.weight",
        "self_attn.k_norm.weight",
        *(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
    ]
    hf_names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    hf_names += [f"model.layers.{i}.{n}" for i in range(n_layers) for n in per_layer]
    mapping = {}
    for hf_name in hf_names:
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is not None:
            mapping[gguf_name] = hf_name
    return mapping


def _unpermute_llama(
    hf_name: str, weight: torch.Tensor | StoredBlocks, config: Any
) -> torch.Tensor | StoredBlocks:
    """llama.cpp interleaves the rotary halves of q and k rows, head by head; restore the HF
    order (of whole heads: a rank's slice holds whole heads). A row permutation: stored
    blocks (whole rows) move as the values do."""
    if ".q_proj." not in hf_name and ".k_proj." not in hf_name:
        return weight
    if isinstance(weight, StoredBlocks):
        rows = _unpermute_llama(hf_name, weight.data, config)
        assert isinstance(rows, torch.Tensor)
        return StoredBlocks(weight.qtype, weight.columns, rows)
    head_dim = getattr(config, "head_dim", None) or (
        config.hidden_size // config.num_attention_heads
    )
    heads = weight.shape[0] // head_dim
    half = head_dim // 2
    return (
        weight.reshape(heads, half, 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
        .contiguous()
    )
