"""What crosses between the front end and the engine core: small typed messages.

The front end (tokenizer, input checks, output processing, HTTP) and the engine core
(scheduler, model runner) run in different processes by default (``core_proc.py``); these
structs are their whole vocabulary, encoded with msgspec's msgpack. Requests go one way,
step outputs the other; utility calls (a name and arguments, from ``UTILITIES``) and their
results go both ways under an id.

``SamplingParams`` travels pickled: it can hold ``logits_processors`` (callables, which must
then be importable functions) and is sent once per request, never per step.
"""

from __future__ import annotations

import enum
import io
import pickle
import types
from typing import Any

import msgspec

from pagedllm.core.scheduler_output import EngineCoreOutput
from pagedllm.metrics.stats import EngineSnapshot, IterationStats
from pagedllm.sampling_params import SamplingParams


class EngineCoreRequest(msgspec.Struct, array_like=True, gc=False):
    """One sequence for the scheduler (a request with n > 1 sends one per sample).
    ``sampling_params`` is a ``SamplingParams``; on the wire it is pickled (``Codec``)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: Any
    eos_token_id: int | None
    arrival_time: float
    priority: int
    cache_salt: str | None
    client_index: int = 0  # which front end sent it (several API servers share one core)


class _WireRequest(msgspec.Struct, array_like=True, gc=False):
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: bytes
    eos_token_id: int | None
    arrival_time: float
    priority: int
    cache_salt: str | None
    client_index: int


class UnreadableRequest(msgspec.Struct, array_like=True):
    """A request whose sampling parameters the engine process could not unpickle (a
    logits processor from a module it cannot import): ``Codec.decode`` returns it in the
    request's place so that request alone fails. Never sent: not a wire type."""

    request_id: str
    client_index: int
    error: str


class _EngineBoundPickler(pickle.Pickler):
    """Pickles as the wire does, refusing what refers to the running script: a function
    or class pickles by reference to its module, and the engine process's ``__main__`` is
    its own, not the user's script."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and obj.__module__ == "__main__":
            raise pickle.PicklingError(
                f"{obj.__qualname__} is defined in the script being run (__main__)"
            )
        return NotImplemented  # pickled as usual


def check_picklable(params: SamplingParams) -> None:
    """What the engine process cannot receive is refused at admission, by name."""
    try:
        pickler = _EngineBoundPickler(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL)
        pickler.dump(params.logits_processors)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError(
            "logits_processors must be importable (module-level functions or instances of "
            "module-level classes, in a module other than the script being run) when the "
            "engine runs in its own process; set PAGEDLLM_ENABLE_MULTIPROCESSING=0 to pass "
            f"other callables ({exc})."
        ) from None


class EngineCoreOutputs(msgspec.Struct, array_like=True, gc=False):
    """One step's results (or, with no outputs, the engine's state after it went idle)."""

    outputs: list[EngineCoreOutput]
    iteration: IterationStats
    snapshot: EngineSnapshot


class UtilityCall(msgspec.Struct, array_like=True):
    call_id: int
    name: str
    args: list[Any]
    client_index: int = 0  # where the result goes


class UtilityResult(msgspec.Struct, array_like=True):
    call_id: int
    result: Any = None
    error: str | None = None


class Abort(msgspec.Struct, array_like=True):
    request_ids: list[str]


class Shutdown(msgspec.Struct, array_like=True):
    pass


class Started(msgspec.Struct, array_like=True):
    """The engine process is ready (with what the front end logs), or failed to start."""

    error: str | None = None
    error_type: str | None = None  # "ValueError": a configuration the user can fix
    num_gpu_blocks: int = 0


# Front end -> engine, tagged by type; engine -> front end likewise.
Inbound = EngineCoreRequest | Abort | UtilityCall | Shutdown
Outbound = EngineCoreOutputs | UtilityResult | Started


class Tag(enum.IntEnum):
    REQUEST = 0
    ABORT = 1
    UTILITY = 2
    SHUTDOWN = 3
    OUTPUTS = 4
    RESULT = 5
    STARTED = 6


_TAGS: dict[type, Tag] = {
    _WireRequest: Tag.REQUEST,
    Abort: Tag.ABORT,
    UtilityCall: Tag.UTILITY,
    Shutdown: Tag.SHUTDOWN,
    EngineCoreOutputs: Tag.OUTPUTS,
    UtilityResult: Tag.RESULT,
    Started: Tag.STARTED,
}
_TYPES = {tag: kind for kind, tag in _TAGS.items()}


class Codec:
    """Messages as (one tag byte, msgpack body) frames; a request's frames hold its id
    between the two, so the engine reads whom a request is for without decoding it
    (``peek``)."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders = {tag: msgspec.msgpack.Decoder(kind) for tag, kind in _TYPES.items()}

    def encode(self, message: Inbound | Outbound) -> list[bytes]:
        if isinstance(message, EngineCoreRequest):
            params = pickle.dumps(message.sampling_params, protocol=pickle.HIGHEST_PROTOCOL)
            wire = _WireRequest(*msgspec.structs.astuple(message)[:2], params,
                                *msgspec.structs.astuple(message)[3:])  # fmt: skip
            tag = bytes((Tag.REQUEST,))
            return [tag, message.request_id.encode(), self._encoder.encode(wire)]
        return [bytes((_TAGS[type(message)],)), self._encoder.encode(message)]

    @staticmethod
    def peek(frames: list[Any]) -> tuple[Tag, str | None]:
        """A message's tag, and a request's id, without decoding its body (a request's is
        its token ids and pickled parameters: ~0.1 ms, where this is ~1 us)."""
        tag = Tag(memoryview(frames[0])[0])
        return tag, bytes(frames[1]).decode() if tag == Tag.REQUEST else None

    def decode(self, frames: list[Any]) -> Inbound | Outbound | UnreadableRequest:
        """From ``recv_multipart`` (bytes, or zmq frames: any buffer). A request whose
        parameters cannot be unpickled here comes back as an ``UnreadableRequest``."""
        message = self._decoders[Tag(memoryview(frames[0])[0])].decode(frames[-1])
        if isinstance(message, _WireRequest):
            fields = msgspec.structs.astuple(message)
            try:
                params = pickle.loads(fields[2])
            except Exception as exc:  # the request's own (its callables' modules, say)
                error = f"{type(exc).__name__}: {exc}"
                return UnreadableRequest(message.request_id, message.client_index, error)
            return EngineCoreRequest(*fields[:2], params, *fields[3:])
        return message
