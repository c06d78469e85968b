"""The engine process launched before the configuration is built (engine_process.py): it
imports meanwhile, ends quietly when the configuration fails, and an engine built that way
generates as before."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, cast

import pytest
import zmq

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineArgs, EngineConfig, UsageContext
from pagedllm.engine import llm_engine
from pagedllm.engine.core_client import MPClient
from pagedllm.engine.engine_process import (
    EngineArguments,
    PendingEngine,
    PickledArguments,
    engine_addresses,
    remove_addresses,
    write_message,
)
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.executor.parent_watch import module_argv, spawn_owned
from tests.conftest import engine_in_process


def engine_children() -> list[int]:
    """This process's children that are engine core processes (alive or not yet reaped)."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists() and b"pagedllm.engine.core_proc" in cmdline.read_bytes():
                pids.append(int(pid))
    return pids


def record_launches(monkeypatch: pytest.MonkeyPatch, events: list[str]) -> list[PendingEngine]:
    """The engine processes ``PendingEngine.launch`` starts from now on (each also noted as
    "launch" in ``events``)."""
    launched: list[PendingEngine] = []
    launch = PendingEngine.launch.__func__  # type: ignore[attr-defined]

    def recording(
        cls: type[PendingEngine], num_clients: int = 1, arguments: EngineArguments | None = None
    ) -> PendingEngine:
        events.append("launch")
        launched.append(launch(cls, num_clients, arguments))
        return launched[-1]

    monkeypatch.setattr(PendingEngine, "launch", classmethod(recording))
    return launched


def test_an_engine_process_without_its_config_ends_quietly() -> None:
    """Its parent's configuration failed and the pipe closed: exit 0, no traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pagedllm.engine.core_proc", "ipc:///tmp/x-in", "ipc:///tmp/x-0"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, stderr = process.communicate(input="", timeout=120)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


FAIL_ON_IMPORT = 'raise RuntimeError("torchvision was imported")\n'
LOAD_CONFIG = (
    "{hide}"
    "import transformers.utils.type_validators\n"
    "from transformers import LlamaConfig\n"
    "assert LlamaConfig(num_hidden_layers=2).num_hidden_layers == 2\n"
)
HIDING = {
    "engine process": (
        "from pagedllm.engine.core_proc import _import_config_modules\n_import_config_modules()\n"
    ),
    "pagedllm command": (
        "from pagedllm.entrypoints.cli.main import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
    ),
    "nothing (the check can fail)": "",
}


@pytest.mark.parametrize("process", list(HIDING))
def test_pagedllms_processes_keep_torchvision_out(tmp_path: Path, process: str) -> None:
    """With torchvision installed, transformers' config modules import it (and, on the H200
    image, torch._dynamo with it): the engine process and the ``pagedllm`` command hide it
    first, and a model's config still loads. Without the hiding, a torchvision that fails
    on import (standing in for the real one) is imported."""
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(FAIL_ON_IMPORT)
    code = LOAD_CONFIG.format(hide=HIDING[process])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    if HIDING[process]:
        assert done.returncode == 0, done.stderr
    else:
        assert "torchvision was imported" in done.stderr


def test_a_failed_configuration_stops_the_early_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process is launched first, then the configuration is built; when that raises,
    the user sees its error and no engine process is left behind."""
    monkeypatch.setenv("PAGEDLLM_ENABLE_MULTIPROCESSING", "1")
    order: list[str] = []
    launched = record_launches(monkeypatch, order)

    def failing_config(self: EngineArgs, *args: object) -> None:
        order.append("config")
        raise ValueError("max_model_len is too large for this test")

    monkeypatch.setattr(EngineArgs, "create_engine_config", failing_config)
    with pytest.raises(ValueError, match="too large for this test"):
        LLM(model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert order == ["launch", "config"]
    assert launched[0].process.returncode is not None  # killed and reaped
    assert launched[0].process.pid not in engine_children()
    assert not socket_directory(launched[0]).exists()


def test_cancel_leaves_a_configured_engine_to_its_client() -> None:
    """Once the config is sent, the client owns the process: cancel() does not kill it."""
    process = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    pending = PendingEngine("ipc:///tmp/unused-in", ["ipc:///tmp/unused-0"], process)
    # Any picklable object stands for the config: `cat` only swallows the bytes.
    pending.configure(cast(EngineConfig, EngineArgs(model="any")))
    pending.cancel()
    assert process.poll() is None
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=10) == 0


def test_the_tokenizer_loads_while_the_engine_builds(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The front end loads its tokenizer and processors after sending the configuration
    and before waiting for the engine to report in, so both run at once."""
    monkeypatch.setenv("PAGEDLLM_ENABLE_MULTIPROCESSING", "1")
    order: list[str] = []
    load = llm_engine.load_tokenizer
    wait = MPClient.wait_started

    def loading(*args: Any) -> Any:
        order.append("tokenizer")
        return load(*args)

    def waiting(self: MPClient) -> Any:
        order.append("wait for the engine")
        return wait(self)

    monkeypatch.setattr(llm_engine, "load_tokenizer", loading)
    monkeypatch.setattr(MPClient, "wait_started", waiting)
    llm = LLM(model=str(tiny_models["llama"]), max_model_len=64, skip_tokenizer_init=True)
    try:
        assert order == ["tokenizer", "wait for the engine"]
    finally:
        llm.llm_engine.core.shutdown()


def test_an_early_engine_generates(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLM() with the engine in its own process: launched early, configured, then serving
    greedy tokens equal to an in-process engine's."""
    model = str(tiny_models["llama"])
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, detokenize=False)
    prompt = {"prompt_token_ids": [5, 17, 33, 2]}
    monkeypatch.setenv("PAGEDLLM_ENABLE_MULTIPROCESSING", "0")
    inproc = LLM(model=model, max_model_len=64, skip_tokenizer_init=True)
    expected = inproc.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    del inproc
    monkeypatch.setenv("PAGEDLLM_ENABLE_MULTIPROCESSING", "1")
    launched = record_launches(monkeypatch, [])
    llm = LLM(model=model, max_model_len=64, skip_tokenizer_init=True)
    try:
        assert [len(p.output_addresses) for p in launched] == [1]
        assert llm.llm_engine.core.engine_pid == launched[0].process.pid
        got = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
        assert list(got) == list(expected)
        directory = socket_directory(launched[0])
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert {p.name for p in directory.iterdir()} == {"in", "out0"}
    finally:
        llm.llm_engine.core.shutdown()
    assert not directory.exists()


def socket_directory(pending: PendingEngine) -> Path:
    """The directory of ``pending``'s sockets, which all share it."""
    paths = [a.removeprefix("ipc://") for a in [pending.input_address, *pending.output_addresses]]
    assert len({os.path.dirname(p) for p in paths}) == 1, paths
    return Path(paths[0]).parent


def test_the_engines_sockets_are_reachable_by_this_user_alone() -> None:
    """The engine's input unpickles what arrives: its sockets sit in a directory only this
    user may enter, whatever the umask, and go with it."""
    previous = os.umask(0)  # the most permissive: files made now would be world-writable
    try:
        input_address, outputs = engine_addresses(2)
    finally:
        os.umask(previous)
    pending = PendingEngine(input_address, outputs, cast(subprocess.Popen, None))
    directory = socket_directory(pending)
    assert directory.parent == Path(tempfile.gettempdir())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert directory.stat().st_uid == os.getuid()
    assert [a.removeprefix("ipc://") for a in outputs] == [
        str(directory / "out0"), str(directory / "out1"),
    ]  # fmt: skip
    context = zmq.Context()
    try:
        sockets = [context.socket(zmq.PULL) for _ in range(3)]
        for socket, address in zip(sockets, [input_address, *outputs], strict=True):
            socket.bind(address)
        for socket in sockets:
            socket.close(linger=0)
    finally:
        context.term()
    remove_addresses(outputs)  # one front end's share: the input is still there
    assert directory.exists()
    remove_addresses([input_address])
    assert not directory.exists()


TORCH_AT_LAUNCH = """
import sys
from pagedllm import AsyncEngineArgs, AsyncLLM, LLM
from pagedllm.engine.engine_process import PendingEngine

def launch(cls, num_clients=1, arguments=None):
    print("torch imported at launch:", "torch" in sys.modules, flush=True)
    raise SystemExit(0)

PendingEngine.launch = classmethod(launch)
{front_end}
"""
FRONT_ENDS = {
    "LLM": 'LLM(model="HuggingFaceTB/SmolLM2-135M-Instruct")',
    "AsyncLLM": "AsyncLLM.from_engine_args(AsyncEngineArgs())",
}


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_the_engine_process_launches_before_the_front_end_imports_torch(front_end: str) -> None:
    """torch's import (~4 s on the H200) belongs to the engine process: the front end's
    import of pagedllm and its arguments come first, then the launch, so the engine's
    imports overlap the front end's configuration (issue 18's W4)."""
    env = {**os.environ, "PAGEDLLM_ENABLE_MULTIPROCESSING": "1"}
    done = subprocess.run(
        [sys.executable, "-c", TORCH_AT_LAUNCH.format(front_end=FRONT_ENDS[front_end])],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "torch imported at launch: False" in done.stdout, done.stdout + done.stderr


# -- the engine built from the arguments while the front end's configuration is on its way


GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, detokenize=False)
PROMPT = {"prompt_token_ids": [5, 17, 33, 2]}


def launch_logged(tmp_path: Path, arguments: EngineArguments) -> tuple[PendingEngine, Path]:
    """An engine process sent ``arguments``, as ``start_early`` launches it, with its log in
    a file."""
    input_address, outputs = engine_addresses(1)
    log = tmp_path / "engine.log"
    with log.open("w") as stderr:  # the log goes to stdout
        process = spawn_owned(
            module_argv("pagedllm.engine.core_proc", input_address, *outputs),
            stdin=subprocess.PIPE, stdout=stderr, stderr=stderr,
        )  # fmt: skip
    assert process.stdin is not None
    message = PickledArguments.of(arguments)
    assert message is not None
    write_message(process.stdin, message)
    return PendingEngine(input_address, outputs, process), log


def wait_for_line(pending: PendingEngine, log: Path, text: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        ended = pending.process.poll() is not None
        assert not ended and time.monotonic() < deadline, (
            f"no {text!r} in the engine's log:\n{log.read_text()}"
        )
        time.sleep(0.2)


def greedy_tokens(engine: LLMEngine) -> list[int]:
    engine.add_request("r", PROMPT, GREEDY)
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens = list(output.outputs[0].token_ids)
    return tokens


def in_process(config: EngineConfig) -> tuple[list[int], int]:
    """Greedy tokens and KV cache blocks of an engine core built in this process."""
    with engine_in_process():
        engine = LLMEngine(config)
    try:
        return greedy_tokens(engine), engine.kv_cache_state()["num_blocks"]
    finally:
        engine.shutdown()


def served(pending: PendingEngine, config: EngineConfig) -> tuple[list[int], int]:
    """The front end's half: ``config`` sent to ``pending``, then what it serves."""
    engine = LLMEngine(config, pending=pending)
    try:
        return greedy_tokens(engine), engine.kv_cache_state()["num_blocks"]
    finally:
        engine.shutdown()


def tiny_args(tiny_models: dict[str, Path], **overrides: object) -> EngineArgs:
    kw = dict(model=str(tiny_models["llama"]), max_model_len=64, skip_tokenizer_init=True)
    return EngineArgs(**{**kw, **overrides})  # type: ignore[arg-type]


def test_an_engine_ready_first_builds_from_the_arguments(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """The front end's configuration is late: the engine process builds the same one from
    the arguments, builds the core from it, and serves with it once the front end's
    configuration arrives and matches. The configuration's lines are logged once, by the
    front end."""
    args = tiny_args(tiny_models)
    config = args.create_engine_config(UsageContext.LLM_CLASS)
    expected = in_process(config)
    pending, log = launch_logged(tmp_path, EngineArguments(args, UsageContext.LLM_CLASS))
    wait_for_line(pending, log, "Engine core built from the engine arguments")
    assert served(pending, config) == expected
    text = log.read_text()
    assert "Non-default args" not in text and "differs" not in text, text


def test_an_engine_built_ahead_from_other_arguments_is_built_again(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Should the engine's configuration differ from the front end's, the front end's wins:
    the engine says which part differed and builds again (here: a KV cache twice as large)."""
    config = tiny_args(tiny_models, kv_cache_memory_bytes=1 << 21).create_engine_config(
        UsageContext.LLM_CLASS
    )
    expected = in_process(config)
    other = EngineArguments(
        tiny_args(tiny_models, kv_cache_memory_bytes=1 << 20), UsageContext.LLM_CLASS
    )
    pending, log = launch_logged(tmp_path, other)
    wait_for_line(pending, log, "Engine core built from the engine arguments")
    assert served(pending, config) == expected
    assert "differs from the front end's configuration in cache_config" in log.read_text()


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_the_engine_built_ahead_and_discarded_is_freed(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """The core built from differing arguments, once discarded, is freed before the
    engine is built again (no reference to it left; it was frozen out of the collector's
    passes, so any cycles are thawed first): here its 768 MiB KV cache, zeroed, so
    resident; otherwise the engine process would hold two."""
    config = tiny_args(tiny_models, kv_cache_memory_bytes=1 << 21).create_engine_config(
        UsageContext.LLM_CLASS
    )
    big = EngineArguments(
        tiny_args(tiny_models, kv_cache_memory_bytes=768 << 20), UsageContext.LLM_CLASS
    )
    pending, log = launch_logged(tmp_path, big)
    wait_for_line(pending, log, "Engine core built from the engine arguments")
    held = resident_mib(pending.process.pid)
    engine = LLMEngine(config, pending=pending)
    try:
        greedy_tokens(engine)
        after = resident_mib(pending.process.pid)
    finally:
        engine.shutdown()
    assert after < held - 512, (held, after)


def test_arguments_that_fail_here_leave_the_front_ends_configuration(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A configuration that raises in the engine process is not an error there (the front
    end raises its own to the user); the engine then waits for the front end's."""
    config = tiny_args(tiny_models).create_engine_config(UsageContext.LLM_CLASS)
    expected = in_process(config)
    broken = EngineArguments(tiny_args(tiny_models, max_model_len=-7), UsageContext.LLM_CLASS)
    pending, log = launch_logged(tmp_path, broken)
    wait_for_line(pending, log, "waiting for the front end's configuration")
    assert served(pending, config) == expected
    assert "Traceback" not in log.read_text()


def test_arguments_the_engine_cannot_load_leave_the_front_ends_configuration(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arguments holding a class only the user's process has (a module it built in memory:
    the engine process imports from the same path, but no file holds this one): the engine
    process logs that they did not load and serves the front end's configuration."""
    module = types.ModuleType("users_own_module")
    exec("class Name(str):\n    pass\n", module.__dict__)
    monkeypatch.setitem(sys.modules, "users_own_module", module)
    Name = module.Name

    config = tiny_args(tiny_models).create_engine_config(UsageContext.LLM_CLASS)
    expected = in_process(config)
    foreign = tiny_args(tiny_models, served_model_name=Name("tiny"))
    pending, log = launch_logged(tmp_path, EngineArguments(foreign, UsageContext.LLM_CLASS))
    wait_for_line(pending, log, "The engine arguments did not load here (ModuleNotFoundError")
    assert served(pending, config) == expected


def test_a_configuration_already_there_is_used_as_it_is(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """The front end was first (its configuration waits in the pipe when the engine's
    imports end): nothing is built from the arguments."""
    args = tiny_args(tiny_models)
    config = args.create_engine_config(UsageContext.LLM_CLASS)
    expected = in_process(config)
    pending, log = launch_logged(tmp_path, EngineArguments(args, UsageContext.LLM_CLASS))
    assert served(pending, config) == expected
    assert "from the engine arguments" not in log.read_text()


def test_arguments_that_do_not_pickle_are_not_sent() -> None:
    """A lambda among the arguments: nothing goes ahead (the engine waits for the
    configuration); plain arguments go as a message the engine can load."""
    unpicklable = EngineArgs(logits_processors=[lambda logits: logits])
    assert PickledArguments.of(EngineArguments(unpicklable, UsageContext.LLM_CLASS)) is None
    message = PickledArguments.of(EngineArguments(EngineArgs(), UsageContext.LLM_CLASS))
    assert message is not None
    loaded = message.load()
    assert loaded is not None and loaded.engine_args == EngineArgs()
