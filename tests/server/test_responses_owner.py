"""Stored responses belong to the API key that created them, as OpenAI scopes them to a
project: on a server shared by two keys, key B's retrieve, stream, cancel, delete and
previous_response_id of key A's response (finished, or a background run still going) are
the very 404 an unknown id gets, and leave it as it was for key A. A key sent in both
credential headers is the same owner as that key sent once."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from fastapi import FastAPI, Request

from pagedllm.entrypoints.openai.background_responses import BackgroundRuns
from pagedllm.entrypoints.openai.errors import OpenAIError
from pagedllm.entrypoints.openai.middleware import ApiKeyMiddleware, request_owner
from pagedllm.entrypoints.openai.responses_protocol import ResponsesRequest
from pagedllm.entrypoints.openai.serving_responses import not_found
from tests.server.conftest import API_KEY, OTHER_KEY
from tests.server.test_reasoning_stream import PIECES, ScriptedEngine
from tests.server.test_responses import scripted

A = {"Authorization": f"Bearer {API_KEY}"}
B = {"Authorization": f"Bearer {OTHER_KEY}"}
UNKNOWN = "resp_0123456789abcdef0123456789abcdef"
# A run long enough to be still going while key B tries it (the tiny model's context is 512).
LONG = {"max_output_tokens": 480, "ignore_eos": True}


@pytest.fixture
def http(two_keys_http: httpx.Client) -> httpx.Client:
    return two_keys_http


def create(http: httpx.Client, key: dict[str, str], **fields) -> httpx.Response:
    body = {"input": "Say hi.", "max_output_tokens": 4, "temperature": 0, **fields}
    return http.post("/v1/responses", headers=key, json=body)


def attempts(http: httpx.Client, key: dict[str, str], response_id: str) -> dict[str, tuple]:
    """What each way of reaching ``response_id`` answers ``key``: (status, body)."""
    replies = {
        "retrieve": http.get(f"/v1/responses/{response_id}", headers=key),
        "stream": http.get(f"/v1/responses/{response_id}?stream=true", headers=key),
        "cancel": http.post(f"/v1/responses/{response_id}/cancel", headers=key),
        "delete": http.delete(f"/v1/responses/{response_id}", headers=key),
        "continue": create(http, key, previous_response_id=response_id),
    }
    return {name: (reply.status_code, reply.text) for name, reply in replies.items()}


def assert_unknown_to(http: httpx.Client, key: dict[str, str], response_id: str) -> None:
    """Every attempt of ``key`` on ``response_id`` is answered as for an id never created:
    same status, same body but for the id itself (nothing tells it exists)."""
    unknown = attempts(http, key, UNKNOWN)
    assert all(status == 404 for status, _ in unknown.values()), unknown
    expected = {
        name: (s, body.replace(UNKNOWN, response_id)) for name, (s, body) in unknown.items()
    }
    assert attempts(http, key, response_id) == expected


def wait_for_status(http: httpx.Client, response_id: str, statuses: tuple[str, ...]) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = http.get(f"/v1/responses/{response_id}", headers=A).json()
        if body["status"] in statuses:
            return body
        time.sleep(0.02)
    raise AssertionError(f"{response_id} never reached {statuses}: {body['status']}")


def test_another_key_finds_a_stored_response_as_unknown(http):
    created = create(http, A)
    assert created.status_code == 200
    response = created.json()
    assert_unknown_to(http, B, response["id"])
    # still there for its own key, as it was: retrieve and continue from it
    assert http.get(f"/v1/responses/{response['id']}", headers=A).json() == response
    continued = create(http, A, previous_response_id=response["id"], input="And?")
    assert continued.status_code == 200
    assert continued.json()["usage"]["input_tokens"] > response["usage"]["input_tokens"]
    assert http.delete(f"/v1/responses/{response['id']}", headers=A).status_code == 200


def test_another_key_cannot_stop_or_read_a_running_background_response(http):
    queued = create(http, A, background=True, stream=False, **LONG).json()
    wait_for_status(http, queued["id"], ("in_progress",))
    assert_unknown_to(http, B, queued["id"])
    # neither cancelled nor deleted: key A finds it running still, and cancels it itself
    assert http.get(f"/v1/responses/{queued['id']}", headers=A).json()["status"] == "in_progress"
    cancelled = http.post(f"/v1/responses/{queued['id']}/cancel", headers=A)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_another_key_cannot_replay_a_streamed_background_response(http):
    with http.stream(
        "POST",
        "/v1/responses",
        headers=A,
        json={"input": "Say hi.", "background": True, "stream": True, **LONG},
    ) as events:
        first = next(line for line in events.iter_lines() if line.startswith("data: "))
        response_id = json.loads(first.removeprefix("data: "))["response"]["id"]
        assert_unknown_to(http, B, response_id)
        replay = http.get(f"/v1/responses/{response_id}?stream=true", headers=A)
        assert replay.status_code == 200 and "response.completed" in replay.text


def test_a_key_in_both_headers_is_the_same_owner(http):
    both = {**A, "x-api-key": API_KEY}
    x_api_key = {"x-api-key": API_KEY}
    for maker, reader in ((A, both), (both, x_api_key), (x_api_key, A)):
        response_id = create(http, maker).json()["id"]
        assert http.get(f"/v1/responses/{response_id}", headers=reader).status_code == 200
    # both keys at once are neither key alone (the set of keys presented is the owner)
    mixed = {**A, "x-api-key": OTHER_KEY}
    assert_unknown_to(http, mixed, response_id)
    assert http.get(f"/v1/responses/{response_id}", headers=A).status_code == 200


# -- the owner the middleware records, and the handler's checks (no server) ---------------


def owners(headers: list[dict[str, str]], keys: list[str] | None) -> list[str]:
    """The owner each request is given (``keys`` None: a server without --api-key)."""
    app = FastAPI()

    @app.get("/v1/owner")
    async def owner(raw: Request) -> str:
        found = request_owner(raw)
        return repr(None if found is None else sorted(found))

    if keys is not None:
        app.add_middleware(ApiKeyMiddleware, api_keys=keys)

    async def go() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [(await client.get("/v1/owner", headers=h)).json() for h in headers]

    return asyncio.run(go())


def test_the_owner_is_the_set_of_keys_presented():
    keys = [API_KEY, OTHER_KEY]
    sent = [
        A,
        {"x-api-key": API_KEY},
        {**A, "x-api-key": API_KEY},
        B,
        {**A, "x-api-key": OTHER_KEY},
    ]
    assert owners(sent, keys) == ["[0]", "[0]", "[0]", "[1]", "[0, 1]"]
    assert owners([{}, A], None) == ["None", "None"]  # without keys: one owner for all


class HeldEngine(ScriptedEngine):
    """The scripted answer, once ``release`` is set: until then a run is in progress."""

    def __init__(self) -> None:
        super().__init__(PIECES)
        self.release = asyncio.Event()

    def generate_prepared(self, prepared):
        outputs = super().generate_prepared(prepared)

        async def held():
            await self.release.wait()
            async for output in outputs:
                yield output

        return held()


def test_a_running_background_response_survives_another_owners_cancel_and_delete():
    """No timing: the run cannot end before key B has tried it. Its own status updates and
    final answer keep owner A (key A then finds it completed)."""
    handler = scripted()
    engine = handler.chat.engine = HeldEngine()
    owner_a, owner_b = frozenset({0}), frozenset({1})
    background = ResponsesRequest.model_validate({"input": "q", "background": True})

    async def go() -> None:
        response_id = json.loads((await handler.create(background, owner_a)).body)["id"]
        for attempt in (handler.cancel(response_id, owner_b), handler.delete(response_id, owner_b)):
            with pytest.raises(OpenAIError) as caught:
                await attempt
            expected = not_found(response_id)
            assert (caught.value.status, caught.value.message) == (404, expected.message)
        assert handler.runs.is_running(response_id, owner_a)
        engine.release.set()
        while handler.runs.is_running(response_id, owner_a):
            await asyncio.sleep(0.01)
        assert handler.store.get(response_id, owner_a).response["status"] == "completed"
        assert handler.store.get(response_id, owner_b) is None

    asyncio.run(go())


def test_background_runs_are_found_by_their_owner_only():
    """The runs hold their owner too: a streamed run's kept events outlive its stored
    response (evicted), and must not be another key's to replay or forget."""
    owner_a, owner_b = frozenset({0}), frozenset({1})
    runs = BackgroundRuns(4)

    async def go() -> None:
        gate = asyncio.Event()
        runs.start("resp_a", gate.wait(), streamed=True, owner=owner_a)
        assert runs.get("resp_a", owner_b) is None and not runs.is_running("resp_a", owner_b)
        with pytest.raises(OpenAIError) as caught:
            runs.replay("resp_a", None, owner_b)
        assert caught.value.status == 400
        await runs.cancel("resp_a", owner_b)
        assert runs.is_running("resp_a", owner_a)  # not cancelled
        gate.set()
        while runs.is_running("resp_a", owner_a):
            await asyncio.sleep(0.01)
        runs.forget("resp_a", owner_b)
        assert runs.get("resp_a", owner_a) is not None  # not forgotten
        runs.forget("resp_a", owner_a)
        assert runs.get("resp_a", owner_a) is None

    asyncio.run(go())
