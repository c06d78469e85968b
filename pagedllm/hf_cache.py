"""Making the bundled model's tokenizer and config reachable by its repo id from other
libraries: ``AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")`` finds
them offline once they sit in the Hugging Face cache layout
(``models--org--name/snapshots/<revision>/...`` and ``refs/main``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from pagedllm.logger import init_logger

logger = init_logger(__name__)

# Files other libraries read by repo id; the weights stay in the GGUF.
_SHARED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
# Files transformers asks the Hub for when they are not in the snapshot; recorded as absent
# (as a real download records them) so a machine without network does not retry each one.
_ABSENT_FILES = ("added_tokens.json", "special_tokens_map.json", "tokenizer.model")


def publish_snapshot(repo_id: str, source: Path, key: str) -> Path | None:
    """Copy ``source``'s config and tokenizer files into the Hugging Face cache as the
    ``main`` revision of ``repo_id``, unless that repo already has a ``main`` there (a real
    download is never overwritten). ``key`` names the content, so the made-up revision is
    stable. Returns the snapshot folder written, or None when nothing was written."""
    from huggingface_hub import constants

    repo_dir = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    ref = repo_dir / "refs" / "main"
    if ref.exists():
        return None
    revision = hashlib.sha1(key.encode()).hexdigest()  # 40 hex digits, like a commit
    snapshot = repo_dir / "snapshots" / revision
    try:
        _write_snapshot(source, snapshot)
        _mark_absent(repo_dir / ".no_exist" / revision, snapshot)
        _write_ref(ref, revision)
    except OSError as exc:  # a read-only cache must not stop the model from serving
        logger.warning("Could not place %s's tokenizer in %s: %s", repo_id, repo_dir, exc)
        return None
    logger.info("%s's tokenizer and config are in the Hugging Face cache: %s", repo_id, snapshot)
    return snapshot


def _write_snapshot(source: Path, snapshot: Path) -> None:
    if snapshot.exists():
        return
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=snapshot.parent, prefix=".staging-"))
    try:
        for name in _SHARED_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, staging / name)
        try:
            os.replace(staging, snapshot)  # atomic: a reader never sees half of it
        except OSError:
            if not snapshot.exists():  # lost a race only if it is there
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _mark_absent(folder: Path, snapshot: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in _ABSENT_FILES:
        if not (snapshot / name).exists():
            (folder / name).touch()


def _write_ref(ref: Path, revision: str) -> None:
    ref.parent.mkdir(parents=True, exist_ok=True)
    staging = ref.with_name(f".{ref.name}.{os.getpid()}")
    staging.write_text(revision)
    if ref.exists():  # a download finished meanwhile: its ref wins
        staging.unlink()
        return
    os.replace(staging, ref)
