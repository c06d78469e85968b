"""``GET /v1/responses/{id}/input_items`` (OpenAI's "List input items") on a server with two
API keys: the items a stored response was created from, newest first unless asked, in pages
found by item id (``after``), through the openai client's own pager too; a string input is
one user message, other items keep their shapes and ids. Another key's, a deleted and an
unstored response are the 404 of an unknown id; each bad parameter is a 400 naming it."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from pagedllm.entrypoints.openai.serving_responses import ResponseStore, StoredResponse
from tests.server.conftest import API_KEY, OTHER_KEY, Server

A = {"Authorization": f"Bearer {API_KEY}"}
B = {"Authorization": f"Bearer {OTHER_KEY}"}
UNKNOWN = "resp_0123456789abcdef0123456789abcdef"
WORDS = ["one", "two", "three", "four", "five"]


@pytest.fixture
def http(two_keys_http: httpx.Client) -> httpx.Client:
    return two_keys_http


@pytest.fixture
def client(two_keys: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=two_keys.base_url, api_key=API_KEY, max_retries=0)


def create(http: httpx.Client, input, key: dict[str, str] = A, **fields) -> dict:
    body = {"input": input, "max_output_tokens": 2, "temperature": 0, **fields}
    reply = http.post("/v1/responses", headers=key, json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def listed(http: httpx.Client, response_id: str, key: dict[str, str] = A, **params):
    return http.get(f"/v1/responses/{response_id}/input_items", headers=key, params=params)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def text_of(item: dict) -> str:
    return item["content"][0]["text"]


# -- what is listed --------------------------------------------------------------------------


def test_a_string_input_is_one_user_message(http, client):
    response = create(http, "Say hi.")
    page = listed(http, response["id"]).json()
    (item,) = page["data"]
    assert item["id"].startswith("msg_")
    assert item == {
        "id": item["id"], "type": "message", "role": "user", "status": "completed",
        "content": [{"type": "input_text", "text": "Say hi."}],
    }  # fmt: skip
    assert page == {
        "object": "list", "data": [item], "first_id": item["id"], "last_id": item["id"],
        "has_more": False,
    }  # fmt: skip
    # the same through the openai client, and the same ids on every call
    (parsed,) = client.responses.input_items.list(response["id"]).data
    assert parsed.id == item["id"] and parsed.role == "user"
    assert parsed.content[0].type == "input_text" and parsed.content[0].text == "Say hi."


MIXED = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"type": "function_call", "id": "fc_sent", "call_id": "call_1", "name": "get_weather",
     "arguments": '{"city": "Paris"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": '{"celsius": 21}'},
    {"type": "message", "id": "msg_sent", "role": "assistant",
     "content": [{"type": "output_text", "text": "It is 21 C."}]},
    {"role": "user", "content": [{"type": "input_text", "text": "Thanks."}]},
]  # fmt: skip


def test_items_keep_their_shapes_and_ids_newest_first(http, client):
    response = create(http, MIXED)
    newest_first = listed(http, response["id"]).json()["data"]
    items = newest_first[::-1]
    asc = listed(http, response["id"], order="asc").json()["data"]
    assert asc == items and len(items) == 5
    ask, call, output, answer, thanks = items
    assert ask["content"] == [{"type": "input_text", "text": MIXED[0]["content"]}]
    assert call == {
        "id": "fc_sent", "type": "function_call", "call_id": "call_1", "name": "get_weather",
        "arguments": '{"city": "Paris"}', "status": "completed",
    }  # fmt: skip
    assert output == {
        "id": output["id"], "type": "function_call_output", "call_id": "call_1",
        "output": '{"celsius": 21}', "status": "completed",
    }  # fmt: skip
    assert answer["id"] == "msg_sent" and answer["role"] == "assistant"
    assert answer["content"] == [
        {"type": "output_text", "text": "It is 21 C.", "annotations": [], "logprobs": []}
    ]
    assert thanks["role"] == "user" and text_of(thanks) == "Thanks."
    assert len({item["id"] for item in items}) == 5
    # the openai client parses each kind into its own type
    types = [type(item).__name__ for item in client.responses.input_items.list(response["id"])]
    assert types[1:4] == [
        "ResponseOutputMessage", "ResponseFunctionToolCallOutputItem",
        "ResponseFunctionToolCallItem",
    ]  # fmt: skip


def test_a_repeated_item_id_is_replaced_so_after_finds_one_item(http):
    twice = [{**user(word), "type": "message", "id": "msg_same"} for word in WORDS[:2]]
    response = create(http, twice)
    first, second = listed(http, response["id"], order="asc").json()["data"]
    assert first["id"] == "msg_same" and second["id"] not in ("msg_same", None)
    after = listed(http, response["id"], order="asc", after="msg_same").json()
    assert after["data"] == [second]


def test_a_continuation_lists_its_own_input_only(http):
    """OpenAI's reference does not say a continuation lists the earlier turns: each
    response lists the input it was sent with."""
    first = create(http, "My name is Ada.")
    second = create(http, "And?", previous_response_id=first["id"])
    assert [text_of(item) for item in listed(http, second["id"]).json()["data"]] == ["And?"]
    # an empty input continuing a response lists nothing
    third = create(http, [], previous_response_id=second["id"])
    empty = listed(http, third["id"]).json()
    assert empty == {
        "object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False
    }  # fmt: skip


# -- pages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_limit_and_after_page_through_the_items(http, order):
    response = create(http, [user(word) for word in WORDS])
    expected = WORDS if order == "asc" else WORDS[::-1]
    pages, after = [], None
    while True:
        params = {"limit": 2, "order": order, **({"after": after} if after else {})}
        page = listed(http, response["id"], **params).json()
        texts = [text_of(item) for item in page["data"]]
        assert page["first_id"] == page["data"][0]["id"]
        assert page["last_id"] == page["data"][-1]["id"]
        pages.append((texts, page["has_more"]))
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert pages == [(expected[:2], True), (expected[2:4], True), (expected[4:], False)]
    # the default limit (20) lists them all; after the last item, nothing is left
    everything = listed(http, response["id"], order=order).json()
    assert [text_of(item) for item in everything["data"]] == expected
    last = listed(http, response["id"], order=order, after=everything["last_id"]).json()
    assert last["data"] == [] and last["has_more"] is False


def test_the_openai_client_pages_through_them_all(http, client):
    response = create(http, [user(word) for word in WORDS])
    pager = client.responses.input_items.list(response["id"], limit=2, order="asc")
    assert len(pager.data) == 2 and pager.has_more
    assert [item.content[0].text for item in pager] == WORDS  # fetches the next pages
    newest = client.responses.input_items.list(response["id"], limit=1)
    assert [item.content[0].text for item in newest] == WORDS[::-1]


# -- background responses --------------------------------------------------------------------


def status_of(http: httpx.Client, response_id: str) -> str:
    return http.get(f"/v1/responses/{response_id}", headers=A).json()["status"]


def test_a_background_response_lists_its_input_while_it_runs_and_after(http):
    long = {"max_output_tokens": 480, "ignore_eos": True}
    queued = create(http, [user("Count."), user("Slowly.")], background=True, **long)
    running = listed(http, queued["id"], order="asc").json()["data"]
    assert [text_of(item) for item in running] == ["Count.", "Slowly."]
    deadline = time.monotonic() + 60
    while status_of(http, queued["id"]) == "queued" and time.monotonic() < deadline:
        time.sleep(0.02)
    cancel = http.post(f"/v1/responses/{queued['id']}/cancel", headers=A)
    assert cancel.status_code == 200, cancel.text
    # cancelled, kept with the same items (the same ids)
    assert listed(http, queued["id"], order="asc").json()["data"] == running
    done = create(http, "Done?", background=True)
    while status_of(http, done["id"]) in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert [text_of(item) for item in listed(http, done["id"]).json()["data"]] == ["Done?"]


# -- 404s ------------------------------------------------------------------------------------


def test_another_keys_response_is_the_unknown_404(http, client):
    response = create(http, "Mine.")
    for params in ({}, {"limit": 1, "order": "asc"}, {"after": "msg_x"}):
        unknown = listed(http, UNKNOWN, B, **params)
        theirs = listed(http, response["id"], B, **params)
        assert unknown.status_code == theirs.status_code == 404
        assert theirs.text == unknown.text.replace(UNKNOWN, response["id"])
    other = openai.OpenAI(base_url=client.base_url, api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        other.responses.input_items.list(response["id"])
    assert caught.value.param == "response_id"
    assert listed(http, response["id"]).status_code == 200  # still its owner's


def test_deleted_and_unstored_responses_are_404(http, client):
    response = create(http, "Forget me.")
    assert listed(http, response["id"]).status_code == 200
    assert http.delete(f"/v1/responses/{response['id']}", headers=A).status_code == 200
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.input_items.list(response["id"])
    assert response["id"] in caught.value.message
    unstored = create(http, "Keep nothing.", store=False)
    assert listed(http, unstored["id"]).status_code == 404


# -- 400s ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, param, named",
    [
        ({"limit": 0}, "limit", "greater than or equal to 1"),
        ({"limit": 101}, "limit", "less than or equal to 100"),
        ({"limit": "ten"}, "limit", "integer"),
        ({"limit": "2.5"}, "limit", "integer"),
        ({"order": "newest"}, "order", "'asc' or 'desc'"),
        ({"after": "msg_not_in_this_list"}, "after", "msg_not_in_this_list"),
        ({"include": "reasoning.encrypted_content"}, "include", "reasoning.encrypted_content"),
        ({"include[]": "file_search_call.results"}, "include", "file_search_call.results"),
        ({"include": f"message.output_text.logprobs,{'x' * 20}"}, "include", "x" * 20),
        ({"before": "msg_x"}, "before", "before"),
    ],
)  # fmt: skip
def test_bad_parameters_are_400s_naming_them(http, params, param, named):
    response = create(http, "Hi.")
    reply = listed(http, response["id"], **params)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and named in error["message"]


def test_an_unhonoured_include_is_a_400_through_the_client(http, client):
    response = create(http, "Hi.")
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.input_items.list(response["id"], include=["web_search_call.results"])
    assert caught.value.param == "include" and "web_search_call.results" in caught.value.message


def test_unknown_query_parameters_are_ignored_and_logged_once(http, two_keys):
    response = create(http, "Hi.")
    plain = listed(http, response["id"]).json()
    assert listed(http, response["id"], colour="blue").json() == plain
    assert listed(http, response["id"], colour="red").json() == plain
    logged = [line for line in two_keys.logs().splitlines() if "'colour'" in line]
    assert len(logged) == 1 and "InputItemListParams" in logged[0]


# -- include ---------------------------------------------------------------------------------

LOGPROBS = [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}]


def test_included_logprobs_and_image_urls(http, client):
    """Logprobs sent with an output_text part are listed only when included; every part is
    kept in full, so including image urls lists the same items (the values may be repeated,
    as the openai client sends them, or comma-separated, as some other clients do)."""
    said = {"type": "output_text", "text": "Hi", "annotations": [], "logprobs": LOGPROBS}
    response = create(http, [{"role": "assistant", "content": [said]}, user("Again.")])
    plain = listed(http, response["id"], order="asc").json()["data"]
    assert plain[0]["content"] == [{**said, "logprobs": []}]
    page = client.responses.input_items.list(
        response["id"], order="asc", include=["message.output_text.logprobs"]
    )
    logprobs = page.data[0].content[0].logprobs
    assert [(lp.token, lp.logprob) for lp in logprobs] == [("Hi", -0.5)]
    images = listed(http, response["id"], order="asc", include="message.input_image.image_url")
    assert images.json()["data"] == plain
    # still kept after a listing without them; values may also come comma-separated
    both = "message.input_image.image_url,message.output_text.logprobs"
    again = listed(http, response["id"], order="asc", include=both)
    assert again.json()["data"][0]["content"] == [said]


# -- the store and the schema ----------------------------------------------------------------


def test_input_items_count_in_the_stores_byte_bound():
    store = ResponseStore(100, max_bytes=1000)
    items = [{"id": "msg_1", "type": "message", "content": "x" * 2000}]
    store.put("big", StoredResponse({"id": "big"}, [], input_items=items))
    assert store.get("big") is None  # too big with its items: not kept
    store.put("small", StoredResponse({"id": "small"}, [], input_items=items[:0]))
    assert store.get("small") is not None


def test_the_route_is_in_the_openapi_document(http):
    operation = http.get("/openapi.json").json()["paths"]["/v1/responses/{response_id}/input_items"]
    params = {p["name"]: p["schema"] for p in operation["get"]["parameters"]}
    assert set(params) == {"response_id", "after", "include", "limit", "order"}
    assert params["limit"]["minimum"] == 1 and params["limit"]["maximum"] == 100
