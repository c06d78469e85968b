"""Logits processors on their way to the engine process: what it could not find is refused
at admission by name (``check_picklable``), and what it cannot unpickle fails that request
alone (``Codec.decode`` returns an ``UnreadableRequest`` in its place)."""

from __future__ import annotations

import pickle
import sys

import pytest

from pagedllm import SamplingParams
from pagedllm.engine.messages import (
    Codec,
    EngineCoreRequest,
    UnreadableRequest,
    check_picklable,
)


def keep_logits(output_ids: list[int], logits):
    return logits


class Keeper:
    def __call__(self, output_ids: list[int], logits):
        return logits


def as_if_in_the_running_script(monkeypatch, obj) -> None:
    """Define ``obj`` in ``__main__`` the way a user's script does: pickling it by
    reference then succeeds in this process, and would fail in the engine's."""
    monkeypatch.setattr(obj, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], obj.__qualname__, obj, raising=False)
    pickle.dumps(obj)  # what the check alone used to try: it passes


def test_an_importable_processor_passes():
    check_picklable(SamplingParams(logits_processors=[keep_logits, Keeper()]))


def test_a_function_of_the_running_script_is_refused_by_name(monkeypatch):
    def processor(output_ids: list[int], logits):
        return logits

    processor.__qualname__ = "processor"
    as_if_in_the_running_script(monkeypatch, processor)
    with pytest.raises(ValueError, match=r"processor is defined in the script being run"):
        check_picklable(SamplingParams(logits_processors=[processor]))


def test_an_instance_of_a_class_of_the_running_script_is_refused(monkeypatch):
    class Script:
        def __call__(self, output_ids: list[int], logits):
            return logits

    Script.__qualname__ = "Script"
    as_if_in_the_running_script(monkeypatch, Script)
    with pytest.raises(ValueError, match=r"Script is defined in the script being run"):
        check_picklable(SamplingParams(logits_processors=[Script()]))


def request(params: SamplingParams) -> EngineCoreRequest:
    return EngineCoreRequest("r-7", [1, 2, 3], params, None, 0.0, 0, None, client_index=2)


def test_a_request_the_engine_cannot_unpickle_comes_back_by_its_id(monkeypatch, tmp_path):
    (tmp_path / "beside_the_script.py").write_text("def keep(ids, logits):\n    return logits\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import beside_the_script

    codec = Codec()
    frames = codec.encode(request(SamplingParams(logits_processors=[beside_the_script.keep])))
    # The engine process: the module is not on its path.
    monkeypatch.delitem(sys.modules, "beside_the_script")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    decoded = codec.decode(frames)
    assert isinstance(decoded, UnreadableRequest)
    assert (decoded.request_id, decoded.client_index) == ("r-7", 2)
    assert "No module named 'beside_the_script'" in decoded.error


def test_a_readable_request_decodes_whole():
    codec = Codec()
    decoded = codec.decode(codec.encode(request(SamplingParams(logits_processors=[Keeper()]))))
    assert isinstance(decoded, EngineCoreRequest)
    assert decoded.request_id == "r-7" and decoded.client_index == 2
    assert isinstance(decoded.sampling_params.logits_processors[0], Keeper)
