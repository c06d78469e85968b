"""Models named by a repo id are downloaded as vLLM downloads them, here from a fake Hub on
a loopback port: only config, tokenizer and weights; the cache reused with no request;
HF_HUB_OFFLINE honoured; clear messages for a missing repo, a gated one, and a missing
ModelScope; GGUF repos named ``repo:QUANT`` or ``repo/file.gguf``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from pagedllm.hub import pick_gguf
from pagedllm.model_files import DEFAULT_MODEL, resolve_model
from tests.conftest import save_char_tokenizer, save_tiny_model
from tests.unit.fake_hub import FakeHub, start_fake_hub

REPO = "tiny-org/tiny-llama"


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_char_tokenizer(save_tiny_model("llama", tmp_path_factory.mktemp("repo")))
    (folder / "README.md").write_text("a model card: not needed to serve")
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.safetensors").write_bytes(b"another copy")
    return folder


@pytest.fixture
def hub(tiny_repo: Path) -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add_folder(REPO, tiny_repo)
    fake.add_folder("tiny-org/gated", tiny_repo, token="hf_secret")
    gguf = fake.add_folder("tiny-org/tiny-GGUF", tiny_repo)
    gguf.files.update({"tiny-Q4_K_M.gguf": b"GGUF-q4", "tiny-Q8_0.gguf": b"GGUF-q8"})
    server = start_fake_hub(fake)
    yield fake
    server.shutdown()
    server.server_close()


def run(hub: FakeHub, cache: Path, call: str, **env: str) -> tuple[bool, str]:
    """``call`` (a pagedllm.hub or model_files call) in a fresh process, as a start would
    run it: huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE and HF_TOKEN
    once, at import. Returns (succeeded, the path it printed or the error's message)."""
    code = (
        "import sys\n"
        "from pagedllm.hub import download_gguf\n"
        "from pagedllm.model_files import resolve_model, resolve_tokenizer\n"
        f"try:\n    print(repr({call}))\n"
        "except ValueError as exc:\n    print(exc); sys.exit(1)\n"
    )
    env = {**_clean_env(), "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), **env}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    return done.returncode == 0, lines[-1]


def test_download_fetches_only_what_serving_needs_then_reuses_the_cache(hub, tmp_path):
    ok, out = run(hub, tmp_path, f"resolve_model({REPO!r})")
    assert ok, out
    assert "model.safetensors" in out and f"snapshots/{hub.repos[REPO].sha}" in out
    fetched = set(hub.downloads())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched
    assert not fetched & {"README.md", "original/consolidated.safetensors"}

    hub.requests.clear()
    again = run(hub, tmp_path, f"resolve_model({REPO!r})")
    assert again == (True, out)
    assert hub.requests == []  # the second start asks the Hub nothing


def test_offline_mode_uses_the_cache_and_names_the_fix_when_missing(hub, tmp_path):
    ok, out = run(hub, tmp_path, f"resolve_model({REPO!r}).config_dir")
    assert ok, out
    hub.requests.clear()
    assert run(hub, tmp_path, f"resolve_model({REPO!r}).config_dir", HF_HUB_OFFLINE="1") == (
        True, out,
    )  # fmt: skip
    ok, message = run(hub, tmp_path, "resolve_model('tiny-org/other')", HF_HUB_OFFLINE="1")
    assert not ok
    assert "HF_HUB_OFFLINE is set" in message and "`hf download tiny-org/other`" in message
    assert hub.requests == []


def test_missing_repo_is_a_404_naming_it(hub, tmp_path):
    ok, message = run(hub, tmp_path, "resolve_model('tiny-org/no-such-model')")
    assert not ok
    assert "'tiny-org/no-such-model' was not found" in message and "404" in message


def test_gated_repo_says_how_to_get_access(hub, tmp_path):
    ok, message = run(hub, tmp_path, "resolve_model('tiny-org/gated')")
    assert not ok
    assert "'tiny-org/gated' is gated" in message and "401" in message
    assert "HF_TOKEN" in message and "`hf auth login`" in message
    ok, out = run(hub, tmp_path, "resolve_model('tiny-org/gated')", HF_TOKEN="hf_secret")
    assert ok, out


def test_revision_and_download_dir_are_honoured(hub, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    ok, out = run(hub, tmp_path, f"resolve_model({REPO!r}, 'main', {str(elsewhere)!r}).config_dir")
    assert ok, out
    assert str(elsewhere) in out and hub.repos[REPO].sha in out
    assert any(r.endswith("/revision/main") for r in hub.requests)
    ok, message = run(hub, tmp_path, f"resolve_model({REPO!r}, 'v9')")
    assert not ok and "has no revision" in message and "404" in message


def test_a_tokenizer_repo_brings_no_weights(hub, tmp_path):
    """--tokenizer REPO (with --tokenizer-revision) fetches tokenizer and config files only."""
    ok, out = run(hub, tmp_path, f"resolve_tokenizer({REPO!r}, 'main')")
    assert ok, out
    assert "tokenizer.json" in hub.downloads() and "model.safetensors" not in hub.downloads()


def test_gguf_repo_by_quant_type_or_file_name(hub, tmp_path):
    ok, out = run(hub, tmp_path, "download_gguf('tiny-org/tiny-GGUF', 'Q8_0', None, None)")
    assert ok and out.endswith("tiny-Q8_0.gguf')"), out
    call = "download_gguf('tiny-org/tiny-GGUF', 'tiny-Q4_K_M.gguf', None, None)"
    ok, out = run(hub, tmp_path, call)
    assert ok and out.endswith("tiny-Q4_K_M.gguf')"), out
    assert hub.downloads() == ["tiny-Q8_0.gguf", "tiny-Q4_K_M.gguf"]  # nothing else
    ok, message = run(hub, tmp_path, "download_gguf('tiny-org/tiny-GGUF', 'Q2_K', None, None)")
    assert not ok and "no GGUF file for 'Q2_K'" in message and "tiny-Q4_K_M.gguf" in message


def test_gguf_file_choice():
    files = ["a-Q4_K_M.gguf", "sub/a-Q4_K_M.gguf", "b-F16-00001-of-00002.gguf", "README.md"]
    assert pick_gguf("r", "Q4_K_M", files) == "a-Q4_K_M.gguf"
    with pytest.raises(ValueError, match="split into several GGUF files"):
        pick_gguf("r", "F16", files)


def test_modelscope_missing_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PAGEDLLM_USE_MODELSCOPE", "1")
    monkeypatch.setitem(sys.modules, "modelscope", None)  # import fails as if not installed
    with pytest.raises(ValueError, match="pip install modelscope"):
        resolve_model(REPO)


def test_modelscope_downloads_through_its_own_client(tiny_repo: Path, monkeypatch, tmp_path):
    calls: list[dict] = []

    def snapshot_download(model_id: str, **kwargs: object) -> str:
        calls.append({"model_id": model_id, **kwargs})
        return str(tiny_repo)

    module = types.ModuleType("modelscope.hub.snapshot_download")
    module.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    for name in ("modelscope", "modelscope.hub"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "modelscope.hub.snapshot_download", module)
    monkeypatch.setenv("VLLM_USE_MODELSCOPE", "true")
    files = resolve_model("qwen/tiny", revision="v1", download_dir=str(tmp_path))
    assert files.config_dir == tiny_repo
    assert {c["model_id"] for c in calls} == {"qwen/tiny"}
    assert all(c["revision"] == "v1" and c["cache_dir"] == str(tmp_path) for c in calls)
    assert "*.safetensors" in calls[-1]["allow_patterns"]


def test_bundled_model_is_reachable_by_name_offline(tmp_path: Path):
    """After a start, other libraries load the bundled model's tokenizer by its repo id
    with no network; a real download already in the cache is never overwritten."""
    env = {**_clean_env(), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    start = f"from pagedllm.model_files import resolve_model; resolve_model({DEFAULT_MODEL!r})"
    subprocess.run([sys.executable, "-c", start], env=env, check=True, capture_output=True)
    load = (
        "from transformers import AutoTokenizer; "
        f"t = AutoTokenizer.from_pretrained({DEFAULT_MODEL!r}); "
        "print(len(t('Hello')['input_ids']), t.chat_template is not None)"
    )
    out = subprocess.run([sys.executable, "-c", load], env=env, check=True, capture_output=True)
    assert out.stdout.split() == [b"1", b"True"]

    repo = tmp_path / "hf" / "hub" / f"models--{DEFAULT_MODEL.replace('/', '--')}"
    shutil.rmtree(repo)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a-real-download")
    subprocess.run([sys.executable, "-c", start], env=env, check=True, capture_output=True)
    assert (repo / "refs" / "main").read_text() == "a-real-download"
    assert not (repo / "snapshots").exists()


def _clean_env() -> dict[str, str]:
    import os

    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE", "PAGEDLLM_USE", "VLLM_USE"))
    }
