"""The users' client code (../shared/seeds/000, 001), with only base_url changed, and the
README's curl example as written (but for the port)."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

from tests.server.conftest import API_KEY
from tests.server.test_concurrency import wait_idle


def test_seed_001_clients(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key=API_KEY)
    completion = client.chat.completions.create(
        model="qwen2.5-7b-131072",  # 这里是 --served-model-name 的参数
        messages=[
            {"role": "user", "content": "你好，请你介绍一下你自己"},
        ],
        extra_body={
            "temperature": 0.5,
            "max_tokens": 20,
        },
    )
    assert completion.choices[0].message.content
    models = client.models.list()
    model = models.data[0].id
    messages = [{"role": "user", "content": "9.11 and 9.8, 哪个更大?"}]
    response = client.chat.completions.create(model=model, messages=messages, max_tokens=30)
    assert hasattr(response.choices[0].message, "reasoning_content")
    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, max_tokens=30
    )
    printed = []
    for chunk in stream:
        reasoning_content = None
        content = None
        if hasattr(chunk.choices[0].delta, "reasoning_content"):
            reasoning_content = chunk.choices[0].delta.reasoning_content
        elif hasattr(chunk.choices[0].delta, "content"):
            content = chunk.choices[0].delta.content
        if reasoning_content is not None:
            printed.append(("reasoning", reasoning_content))
        elif content is not None:
            printed.append(("content", content))
    assert "".join(t for kind, t in printed if kind == "content").strip()


def test_seed_000_generator(server, monkeypatch):
    """The users' generator as written (max_tokens=50000, unseeded temperature 0.7: up to the
    whole context, minutes on a CPU); the test reads its first pieces, as a user who stops a
    reply does, then closes the connection so the server drops the request."""
    import httpx
    import openai

    http_client = httpx.Client()
    monkeypatch.setattr(openai, "base_url", server.base_url + "/")
    monkeypatch.setattr(openai, "api_key", API_KEY)
    monkeypatch.setattr(openai, "http_client", http_client)
    monkeypatch.setattr(openai, "_client", None)  # the module client is made with http_client

    def generate_response_stream(prompt: str):
        try:
            stream = openai.chat.completions.create(
                model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                messages=[
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": prompt},
                ],
                temperature=0.7,
                max_tokens=50000,
                stream=True,
                logit_bias={},
                frequency_penalty=0.0,
                presence_penalty=0.0,
            )
            collected_content = ""
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    content_piece = chunk.choices[0].delta.content
                    collected_content += content_piece
                    yield content_piece
            return collected_content
        except Exception as e:
            yield f"错误: {e!s}"

    stream = generate_response_stream("Say hi.")
    pieces = list(itertools.islice(stream, 16))
    stream.close()
    http_client.close()  # the server sees the client hang up and frees the request
    assert pieces and not pieces[0].startswith("错误")
    wait_idle(server, timeout=30)


def test_readme_curl_example(server):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(
        r"```bash\n(curl http://localhost:8000/v1/chat/completions.*?)```", readme, re.S
    )
    assert block, "README has a curl example"
    command = block.group(1).strip().replace("localhost:8000", server.url.removeprefix("http://"))
    command += f' -H "Authorization: Bearer {API_KEY}"'
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"chat.completion"' in done.stdout and '"content"' in done.stdout
