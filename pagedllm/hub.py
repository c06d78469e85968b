"""Models named by a repo id, fetched as vLLM fetches them: from the Hugging Face Hub with
``huggingface_hub`` (``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and its cache apply),
or from ModelScope with ``PAGEDLLM_USE_MODELSCOPE=1`` (vLLM's ``VLLM_USE_MODELSCOPE``).

A repo already complete in the cache is used without the network, so a second start makes
no request. Otherwise only what serving needs is fetched, with a progress bar: config,
tokenizer and generation files first, then the safetensors weights (those the index names,
when there is one, so a repo's extra copies such as ``consolidated.safetensors`` are
skipped) or the one GGUF file asked for.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from pagedllm import envs
from pagedllm.logger import init_logger

logger = init_logger(__name__)

# Config, tokenizer, chat-template and generation files: everything but weights.
CONFIG_PATTERNS = [
    "*.json",
    "*.jinja",
    "tokenizer.model",
    "spiece.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
]
# fnmatch's '*' crosses '/': this keeps to the repo's top level (no 'original/' copies).
_SUBFOLDERS = ["*/*"]
_INDEX = "model.safetensors.index.json"


def download_model(repo_id: str, revision: str | None, cache_dir: str | None) -> Path:
    """The snapshot folder of ``repo_id`` with its config, tokenizer and safetensors."""
    return _cached_or_fetched(
        repo_id, lambda local: _model_files(repo_id, revision, cache_dir, local)
    )


def download_tokenizer(repo_id: str, revision: str | None, cache_dir: str | None) -> Path:
    """The snapshot folder of ``repo_id`` with its tokenizer and config files only."""
    return _cached_or_fetched(
        repo_id, lambda local: _snapshot(repo_id, revision, cache_dir, CONFIG_PATTERNS, local)
    )


def download_gguf(
    repo_id: str, quant_or_file: str, revision: str | None, cache_dir: str | None
) -> Path:
    """One GGUF file of a repo, named as vLLM accepts it: ``repo:Q4_K_M`` (the file whose
    name ends in ``-Q4_K_M.gguf``) or ``repo/name.gguf``."""
    if envs.use_modelscope():
        raise ValueError(
            f"GGUF models named by a repo ({repo_id}) are fetched from the Hugging Face Hub "
            "only; with PAGEDLLM_USE_MODELSCOPE set, download the .gguf file with modelscope "
            "and pass its path."
        )
    return _cached_or_fetched(
        repo_id, lambda local: _gguf_file(repo_id, quant_or_file, revision, cache_dir, local)
    )


# -- the cache first, then the network ------------------------------------------------------


def _cached_or_fetched(repo_id: str, fetch: Any) -> Path:
    """``fetch(local=True)``, then ``fetch(local=False)`` when the cache lacks a file; the
    libraries' errors become messages that say what to do."""
    if envs.use_modelscope():
        return _from_modelscope(repo_id, fetch)
    from huggingface_hub import constants

    try:
        folder = fetch(True)
        logger.debug("%s: found complete in the cache, %s", repo_id, folder)
        return folder
    except (FileNotFoundError, _IncompleteLocal) as exc:
        logger.debug("%s: not (completely) in the cache (%s)", repo_id, exc)
        if constants.HF_HUB_OFFLINE:
            raise ValueError(_not_cached(repo_id, exc)) from exc
    logger.info("Downloading %s from %s", repo_id, _source_name())
    try:
        return fetch(False)
    except Exception as exc:
        message = _explain(repo_id, exc)
        if message is None:
            raise
        raise ValueError(message) from exc


def _from_modelscope(repo_id: str, fetch: Any) -> Path:
    """ModelScope's own download skips the files it already has (it has no cache-only mode
    that tells a missing file apart from other errors)."""
    logger.info("Downloading %s from %s", repo_id, _source_name())
    try:
        return fetch(False)
    except ValueError:
        raise
    except Exception as exc:  # modelscope's errors share no base class
        raise ValueError(f"Downloading {repo_id!r} from ModelScope failed: {exc}") from exc


class _IncompleteLocal(Exception):
    """A cached snapshot misses a file that the model needs."""


def _model_files(repo_id: str, revision: str | None, cache_dir: str | None, local: bool) -> Path:
    folder = _snapshot(repo_id, revision, cache_dir, CONFIG_PATTERNS, local)
    index = folder / _INDEX
    if index.exists():
        weights = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        weights = ["*.safetensors"]
    # Online, the first call resolved the revision and a Hub snapshot folder is named by its
    # commit: the weights come from that same commit even if the branch moves meanwhile.
    pinned = revision if local or envs.use_modelscope() else folder.name
    folder = _snapshot(repo_id, pinned, cache_dir, weights, local)
    if local and not _complete(folder):
        raise _IncompleteLocal(repo_id)
    return folder


def _complete(folder: Path) -> bool:
    """Whether a cached snapshot has a config and every weight file its index names (older
    caches and hand-made ones have no file listing for huggingface_hub to check)."""
    if not (folder / "config.json").exists():
        return False
    index = folder / _INDEX
    if not index.exists():
        return True
    names = set(json.loads(index.read_text())["weight_map"].values())
    return all((folder / name).exists() for name in names)


def _snapshot(
    repo_id: str, revision: str | None, cache_dir: str | None, patterns: list[str], local: bool
) -> Path:
    if envs.use_modelscope():
        return _modelscope_snapshot(repo_id, revision, cache_dir, patterns)
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            ignore_patterns=_SUBFOLDERS,
            local_files_only=local,
        )
    )


def _modelscope_snapshot(
    repo_id: str, revision: str | None, cache_dir: str | None, patterns: list[str]
) -> Path:
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError as exc:
        raise ValueError(
            "PAGEDLLM_USE_MODELSCOPE (or VLLM_USE_MODELSCOPE) is set but the modelscope "
            "package is not installed: pip install modelscope (or pip install "
            "'pagedllm[modelscope]'), or unset the variable to use the Hugging Face Hub."
        ) from exc
    from huggingface_hub import constants

    return Path(
        snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            ignore_patterns=_SUBFOLDERS,
            # As vLLM: HF_HUB_OFFLINE keeps ModelScope downloads off too.
            local_files_only=constants.HF_HUB_OFFLINE,
        )
    )


# -- GGUF ------------------------------------------------------------------------------------


def _gguf_file(
    repo_id: str, quant_or_file: str, revision: str | None, cache_dir: str | None, local: bool
) -> Path:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    if quant_or_file.endswith(".gguf"):
        filename = quant_or_file
    elif local:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
            allow_patterns=gguf_patterns(quant_or_file),
        )  # fmt: skip
        files = [str(p.relative_to(folder)) for p in Path(folder).rglob("*.gguf")]
        filename = pick_gguf(repo_id, quant_or_file, files)
    else:
        files = HfApi().list_repo_files(repo_id, revision=revision)
        filename = pick_gguf(repo_id, quant_or_file, files)
    path = hf_hub_download(
        repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=local
    )
    return Path(path)


def gguf_patterns(quant: str) -> list[str]:
    """The file names vLLM matches for ``repo:QUANT``: ``*-QUANT.gguf`` and its shards, at
    the top level or one folder down."""
    return [f"*-{quant}.gguf", f"*-{quant}-*.gguf", f"*/*-{quant}.gguf", f"*/*-{quant}-*.gguf"]


def pick_gguf(repo_id: str, quant: str, files: list[str]) -> str:
    """The one file for ``quant``; a model split into shards is refused (pagedllm reads one
    file, as vLLM does)."""
    matches = sorted({f for f in files for p in gguf_patterns(quant) if fnmatch.fnmatch(f, p)})
    whole = [f for f in matches if fnmatch.fnmatch(Path(f).name, f"*-{quant}.gguf")]
    if whole:
        return min(whole, key=lambda f: (f.count("/"), f))
    if matches:
        raise ValueError(
            f"{repo_id}:{quant} is split into several GGUF files ({', '.join(matches[:3])}); "
            "pagedllm reads one file: merge them with llama.cpp's gguf-split --merge and pass "
            "the merged file's path."
        )
    available = sorted(f for f in files if f.endswith(".gguf"))
    raise FileNotFoundError(
        f"{repo_id} has no GGUF file for {quant!r} (no '*-{quant}.gguf'); GGUF files there: "
        f"{', '.join(available) or 'none'}."
    )


# -- errors ----------------------------------------------------------------------------------


def _source_name() -> str:
    if envs.use_modelscope():
        return "ModelScope"
    from huggingface_hub import constants

    return f"the Hugging Face Hub ({constants.ENDPOINT})"


def _explain(repo_id: str, exc: Exception) -> str | None:
    """What a download error means for the user and what to do; None: not a download error."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError) or _status(exc) == 401:
        return (
            f"Model {repo_id!r} is gated or private on the Hugging Face Hub (HTTP 401): accept "
            f"its terms at https://huggingface.co/{repo_id} with your account, then give a "
            "token with read access: set HF_TOKEN=hf_... or run `hf auth login`."
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"Model {repo_id!r} has no revision by that name (HTTP 404): {_first_line(exc)}"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (
            f"Model {repo_id!r} was not found on {_source_name()} (HTTP 404): check the "
            "spelling (organization/name), or pass a local directory or .gguf file."
        )
    if isinstance(exc, errors.LocalEntryNotFoundError):
        return _not_cached(repo_id, exc)
    if isinstance(exc, FileNotFoundError | errors.EntryNotFoundError):
        return f"{repo_id}: {_first_line(exc)}"
    return None


def _not_cached(repo_id: str, exc: BaseException) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return (
            f"Model {repo_id!r} is not (completely) in the local Hugging Face cache and "
            f"HF_HUB_OFFLINE is set, so it cannot be downloaded: run `hf download {repo_id}` "
            "where the network is reachable (or unset HF_HUB_OFFLINE), or pass a local "
            "directory or .gguf file."
        )
    return (
        f"Model {repo_id!r} could not be downloaded and is not in the local cache: "
        f"{_first_line(exc)}"
    )


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
