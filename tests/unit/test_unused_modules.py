"""Libraries hidden in pagedllm's own processes, and transformers' model registry kept out
of the engine process's configuration; each in a fresh interpreter (they change
``sys.modules`` for the process's life)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_hidden_libraries_look_absent_to_transformers_checks():
    out = run(
        "import importlib.util\n"
        "from pagedllm.unused_modules import UNUSED_LIBRARIES, hide_unused_libraries\n"
        "hide_unused_libraries()\n"
        "for name in UNUSED_LIBRARIES:\n"
        "    assert importlib.util.find_spec(name) is None\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        print('refused', name)\n"
    )
    assert out.split("\n") == ["refused torchvision", "refused sklearn"]


def test_a_config_built_with_the_model_registry_hidden_is_the_same_and_it_imports_after():
    """The configuration built inside the block equals one built outside it (another
    process), and the registry imports as usual after the block."""
    build = (
        "from pagedllm.config import EngineArgs\n"
        "config = EngineArgs(model='benchmarks/model-configs/qwen3-0.6b', load_format='dummy',"
        " max_model_len=512, skip_tokenizer_init=True).create_engine_config()\n"
    )
    show = "print('CONFIG', config.model_config.hf_config.to_json_string())\n"  # after the logs
    hidden = run(
        "import sys\n"
        "from pagedllm.unused_modules import TRANSFORMERS_MODELS, transformers_models_hidden\n"
        "with transformers_models_hidden():\n"
        + "".join(f"    {line}\n" for line in build.splitlines())
        + "    assert sys.modules.get(TRANSFORMERS_MODELS) is None\n"
        "assert TRANSFORMERS_MODELS not in sys.modules\n"
        "import importlib\n"
        "assert importlib.import_module(TRANSFORMERS_MODELS) is not None\n" + show
    )
    plain = run(build + show)
    assert hidden.split("CONFIG")[1] == plain.split("CONFIG")[1]


def test_a_transformers_that_needs_its_model_registry_loads_the_config_again(monkeypatch):
    """A version whose config classes import the registry (ImportError in the block) still
    loads: the second try runs with the registry importable."""
    from transformers import AutoConfig

    from pagedllm import config as config_module
    from pagedllm.model_files import resolve_model
    from pagedllm.unused_modules import TRANSFORMERS_MODELS

    real = AutoConfig.from_pretrained
    tries = []

    def needs_registry(*args, **kwargs):
        tries.append(1)
        if TRANSFORMERS_MODELS in sys.modules and sys.modules[TRANSFORMERS_MODELS] is None:
            raise ImportError(f"import of {TRANSFORMERS_MODELS} halted; None in sys.modules")
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", needs_registry)
    # Hideable even where an earlier test imported it (restored after this test).
    monkeypatch.delitem(sys.modules, TRANSFORMERS_MODELS, raising=False)
    files = resolve_model(str(ROOT / "benchmarks/model-configs/qwen3-0.6b"))
    loaded = config_module._load_hf_config(files, trust_remote_code=False)
    assert loaded.model_type == "qwen3" and len(tries) == 2


def test_the_engine_unpickles_a_config_whose_classes_need_the_registry():
    """``core_proc.load_config`` unpickles with the registry hidden, and again with it when
    the pickle itself names a class of the registry's module."""
    out = run(
        "import pickle, sys\n"
        "from transformers.models.auto import modeling_auto\n"
        "data = pickle.dumps({'cls': modeling_auto.AutoModelForCausalLM})\n"
        "del sys.modules['transformers.models.auto.modeling_auto']\n"
        "from pagedllm.engine.core_proc import load_config\n"
        "loaded = load_config(data)\n"
        "print(loaded['cls'].__name__)\n"
    )
    assert out.splitlines()[-1] == "AutoModelForCausalLM"


def test_the_engine_imports_its_config_modules_without_the_hub_kernel_machinery():
    """``core_proc``'s config imports and a configuration built after them leave
    ``torch.distributed.tensor`` (sympy) unimported and build the same config as a plain
    process; the real hub-kernel module imports after the block."""
    build = (
        "from pagedllm.config import EngineArgs\n"
        "config = EngineArgs(model='benchmarks/model-configs/qwen3-0.6b', load_format='dummy',"
        " max_model_len=512, skip_tokenizer_init=True).create_engine_config()\n"
    )
    show = "print('CONFIG', config.model_config.hf_config.to_json_string())\n"
    stubbed = run(
        "import importlib, sys\n"
        "from pagedllm.engine.core_proc import _import_config_modules\n"
        "from pagedllm.unused_modules import HUB_KERNELS\n"
        "_import_config_modules()\n"
        "assert 'transformers.configuration_utils' in sys.modules\n"
        "assert 'transformers.activations' in sys.modules\n"
        "assert HUB_KERNELS not in sys.modules\n"
        + build
        + "assert 'torch.distributed.tensor' not in sys.modules\n"
        "real = importlib.import_module(HUB_KERNELS)\n"
        "assert getattr(real, '__file__', None)  # the stub has none\n" + show
    )
    plain = run(build + show)
    assert stubbed.split("CONFIG")[1] == plain.split("CONFIG")[1]


def test_a_transformers_that_wants_more_of_the_hub_kernels_imports_it_after_the_block():
    """A version whose activations import another name from the module fails inside the
    block (ImportError) and imports whole after it."""
    out = run(
        "import sys, types\n"
        "from pagedllm.unused_modules import HUB_KERNELS, hub_kernels_stubbed\n"
        "with hub_kernels_stubbed():\n"
        "    stub = sys.modules[HUB_KERNELS]\n"
        "    assert stub.use_kernel_forward_from_hub('SiLU')(int) is int\n"
        "    try:\n"
        "        from transformers.integrations.hub_kernels import LayerRepository\n"
        "    except ImportError:\n"
        "        print('refused inside')\n"
        "from transformers.integrations.hub_kernels import LayerRepository\n"
        "print('imported after', sys.modules[HUB_KERNELS] is not stub)\n"
    )
    assert out.splitlines()[-2:] == ["refused inside", "imported after True"]
