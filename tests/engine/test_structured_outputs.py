"""Structured outputs end to end with the bundled SmolLM2 (offline LLM API): JSON schema,
regex, choice, grammar and JSON object constraints always hold, also with n > 1, mixed
batches, preemption and prefix caching; bad constraints are refused with a sentence."""

from __future__ import annotations

import json
import random
import re
import string
import threading

import jsonschema
import pytest

from pagedllm import SamplingParams
from pagedllm.sampling_params import GuidedDecodingParams, StructuredOutputsParams

# Non-trivial: nested object, enum, bounded integer, pattern, bounded array, optional field.
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "status": {"enum": ["active", "inactive", "banned"]},
        "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$"},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
        },
        "tags": {
            "type": "array",
            "items": {"type": "string", "enum": ["admin", "staff", "guest"]},
            "maxItems": 3,
        },
    },
    "required": ["name", "age", "status", "address"],
}


def chat_prompt(llm, text: str) -> str:
    tokenizer = llm.get_tokenizer()
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def constrained(kind: str, value, **params) -> SamplingParams:
    params.setdefault("max_tokens", 160)
    return SamplingParams(structured_outputs=StructuredOutputsParams(**{kind: value}), **params)


def test_32_seeded_requests_all_validate_against_a_schema(smollm) -> None:
    # 32, not 50 as before: the time is per request (~1 s of CPU each), and 32 rows of ~115
    # tokens still overflow the ~2200-token cache (about a dozen preemptions).
    preemptions = smollm.llm_engine.kv_cache_state()["num_preemptions"]
    prompts = [chat_prompt(smollm, f"Describe user number {i} as JSON.") for i in range(32)]
    params = [constrained("json", PERSON_SCHEMA, temperature=0.8, seed=i) for i in range(32)]
    outputs = smollm.generate(prompts, params, use_tqdm=False)
    for output in outputs:
        completion = output.outputs[0]
        assert completion.finish_reason == "stop", completion.text
        jsonschema.validate(json.loads(completion.text), PERSON_SCHEMA)
    # The requests overflow the fixture's small KV cache: the grammars survive preemption.
    assert smollm.llm_engine.kv_cache_state()["num_preemptions"] > preemptions


def test_regex_and_choice_always_match(smollm) -> None:
    pattern = r"[A-Z]{2}-[0-9]{3}(-[a-z]{2,4})?"
    choices = ["yes", "no", "maybe not"]
    prompts = [chat_prompt(smollm, f"Give me code {i}.") for i in range(12)]
    regex_params = [constrained("regex", pattern, temperature=1.0, seed=i) for i in range(12)]
    choice_params = [constrained("choice", choices, temperature=1.0, seed=i) for i in range(12)]
    outputs = smollm.generate(prompts * 2, regex_params + choice_params, use_tqdm=False)
    for output in outputs[:12]:
        assert re.fullmatch(pattern, output.outputs[0].text), output.outputs[0].text
    for output in outputs[12:]:
        assert output.outputs[0].text in choices
        assert output.outputs[0].finish_reason == "stop"


ARITHMETIC = """
root ::= expr
expr ::= term (("+" | "-") term){0,3}
term ::= [1-9] [0-9]{0,2} | "(" expr ")"
"""


def test_grammar_output_parses(smollm) -> None:
    prompts = [chat_prompt(smollm, "Write an arithmetic expression.")] * 8
    params = [constrained("grammar", ARITHMETIC, temperature=1.0, seed=i) for i in range(8)]
    for output in smollm.generate(prompts, params, use_tqdm=False):
        text = output.outputs[0].text
        assert output.outputs[0].finish_reason == "stop", text
        assert re.fullmatch(r"[0-9+\-()]+", text), text
        compile(text, "<grammar output>", "eval")  # balanced and well-formed


def test_lark_grammar_is_accepted(smollm) -> None:
    lark = 'start: "color: " COLOR\nCOLOR: "red" | "green" | "blue"'
    params = constrained("grammar", lark, temperature=1.0, seed=3)
    text = smollm.generate(chat_prompt(smollm, "A color?"), params, use_tqdm=False)[0].outputs[0]
    assert text.text in {"color: red", "color: green", "color: blue"}


def test_json_object_and_older_guided_decoding_spelling(smollm) -> None:
    prompt = chat_prompt(smollm, "Give me a JSON object about cats.")
    obj = SamplingParams(
        structured_outputs=StructuredOutputsParams(json_object=True), max_tokens=120, seed=1,
        temperature=0.7,
    )  # fmt: skip
    out = smollm.generate(prompt, obj, use_tqdm=False)[0].outputs[0]
    if out.finish_reason == "stop":
        json.loads(out.text)
    guided = SamplingParams(
        guided_decoding=GuidedDecodingParams(choice=["cat", "dog"], backend="xgrammar"),
        max_tokens=8,
    )
    assert guided.structured_outputs is not None and guided.guided_decoding is None
    out = smollm.generate(prompt, guided, use_tqdm=False)[0].outputs[0]
    assert out.text in {"cat", "dog"}


def test_n_samples_each_follow_the_schema(smollm) -> None:
    params = constrained("json", PERSON_SCHEMA, n=3, temperature=1.0, seed=7)
    output = smollm.generate(chat_prompt(smollm, "A user, as JSON."), params, use_tqdm=False)[0]
    assert len(output.outputs) == 3
    for completion in output.outputs:
        jsonschema.validate(json.loads(completion.text), PERSON_SCHEMA)


def test_unconstrained_rows_of_a_mixed_batch_are_untouched(smollm) -> None:
    prompts = [chat_prompt(smollm, f"Tell me about the number {i}.") for i in range(4)]
    plain = SamplingParams(temperature=0.0, max_tokens=24)
    alone = [o.outputs[0].text for o in smollm.generate(prompts, plain, use_tqdm=False)]
    mixed_params = [plain, constrained("choice", ["a", "b"]), plain, constrained("regex", "x+")]
    mixed = smollm.generate(prompts, mixed_params, use_tqdm=False)
    assert mixed[0].outputs[0].text == alone[0]
    assert mixed[2].outputs[0].text == alone[2]
    assert mixed[1].outputs[0].text in {"a", "b"}
    assert re.fullmatch("x+", mixed[3].outputs[0].text)


def test_prefix_cache_hits_keep_the_constraint(smollm) -> None:
    prompt = chat_prompt(smollm, "Describe a user in detail as JSON. " * 8)
    params = constrained("json", PERSON_SCHEMA, temperature=0.0)
    first = smollm.generate(prompt, params, use_tqdm=False)[0]
    second = smollm.generate(prompt, params, use_tqdm=False)[0]
    assert second.num_cached_tokens > 0
    assert second.outputs[0].text == first.outputs[0].text
    jsonschema.validate(json.loads(second.outputs[0].text), PERSON_SCHEMA)


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        # xgrammar's own prefix (a time, a C++ source line) is not passed on.
        (
            {"json": {"type": "object", "properties": {"a": {"type": "nonsense"}}}},
            r'json: Unsupported type "nonsense"$',
        ),
        ({"json": "{not json"}, "not valid JSON"),
        ({"regex": "(unclosed"}, r"regex: Regex parsing error at position 10: The paren"),
        ({"json": {"type": "integer", "minimum": 10**400}}, "json: xgrammar could not convert"),
        ({"grammar": "root ::= undefined_rule"}, "grammar"),
        ({"structural_tag": "[]"}, "structural_tag"),
    ],
)
def test_bad_constraints_are_refused_and_the_engine_keeps_serving(
    smollm, constraint: dict, message: str
) -> None:
    params = SamplingParams(structured_outputs=StructuredOutputsParams(**constraint))
    with pytest.raises(ValueError, match=message):
        smollm.generate("Hi", params, use_tqdm=False)
    assert not smollm.llm_engine.has_unfinished_requests()
    ok = smollm.generate("Hi", SamplingParams(max_tokens=2), use_tqdm=False)[0]
    assert len(ok.outputs[0].token_ids) == 2


def test_constraint_params_are_validated_at_construction() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(json={}, regex="a")
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="choice"):
        StructuredOutputsParams(choice=[])
    with pytest.raises(ValueError, match="not both"):
        SamplingParams(
            structured_outputs=StructuredOutputsParams(regex="a"),
            guided_decoding=GuidedDecodingParams(regex="b"),
        )
    with pytest.raises(ValueError, match="backend"):
        GuidedDecodingParams(regex="a", backend="outlines")


def test_whitespace_pattern_is_refused_by_name(smollm) -> None:
    params = SamplingParams(
        structured_outputs=StructuredOutputsParams(json={"type": "object"}, whitespace_pattern=" ")
    )
    with pytest.raises(ValueError, match="whitespace_pattern"):
        smollm.generate("Hi", params, use_tqdm=False)


def test_pydantic_models_give_their_schema() -> None:
    from pydantic import BaseModel

    class Point(BaseModel):
        x: int
        y: int

    params = StructuredOutputsParams(json=Point)
    assert params.json["required"] == ["x", "y"]


@pytest.fixture(scope="module")
def char_model(tiny_models, tmp_path_factory):
    """The tiny random Llama with a one-token-per-character tokenizer."""
    import shutil

    from tests.conftest import save_char_tokenizer

    path = tmp_path_factory.mktemp("chars") / "llama"
    shutil.copytree(tiny_models["llama"], path)
    return save_char_tokenizer(path)


@pytest.fixture(scope="module")
def char_llm(char_model):
    """An engine on ``char_model`` with the default options, for the tests below that need
    no other (each request seeded: what one samples does not depend on the others)."""
    from pagedllm import LLM

    return LLM(model=str(char_model), kv_cache_memory_bytes="32M")


def test_bounded_strings_hold_strict_json_characters(char_llm) -> None:
    """A random model over a one-character-per-token vocabulary reaches tabs and other
    control characters that strict JSON forbids raw in strings (xgrammar 0.2.8 lets them
    into length-bounded strings unless pagedllm fixes the grammar)."""
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "maxLength": 12}, "b": {"enum": [1, 2]}},
        "required": ["a", "b"],
    }
    so = StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    params = SamplingParams(structured_outputs=so, temperature=1.5, seed=0, n=32, max_tokens=200)
    samples = char_llm.generate(["{"], params, use_tqdm=False)[0].outputs
    texts = [s.text for s in samples]
    assert all(s.finish_reason == "stop" for s in samples)
    for text in texts:
        jsonschema.validate(json.loads(text), schema)  # strict: no raw control characters


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "outlines"}, "'outlines' is not supported"),
        ({"reasoning_parser": "deepseek_r1"}, "reasoning_parser is not supported"),
        ({"colour": "blue"}, r"Unknown structured_outputs_config option\(s\) \['colour'\]"),
    ],
)
def test_engine_options_are_checked_by_name(tiny_models, options: dict, message: str) -> None:
    from pagedllm.config import EngineArgs

    args = EngineArgs(model=str(tiny_models["llama"]), structured_outputs_config=options)
    with pytest.raises(ValueError, match=message):
        args.create_engine_config()
    with pytest.raises(ValueError, match="'outlines' is not supported"):
        EngineArgs(
            model=str(tiny_models["llama"]), guided_decoding_backend="outlines"
        ).create_engine_config()


def test_the_command_line_takes_the_config_as_json() -> None:
    import argparse

    from pagedllm.entrypoints.cli.engine_flags import add_engine_flags, engine_args_from

    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    flags = ["--structured-outputs-config", '{"disable_any_whitespace": true}',
             "--guided_decoding_backend", "xgrammar"]  # fmt: skip
    args = engine_args_from(parser.parse_args(flags))
    assert args.structured_outputs_config == {"disable_any_whitespace": True}
    assert args.guided_decoding_backend == "xgrammar"


def test_engine_wide_disable_any_whitespace(char_model, char_llm) -> None:
    """A random model at a high temperature strays into optional whitespace unless the
    engine option forbids it for every request."""
    from pagedllm import LLM

    schema = {
        "type": "object",
        "properties": {"b": {"enum": [1, 2]}, "c": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["b", "c"],
    }
    params = constrained("json", schema, temperature=1.5, seed=0, n=16, max_tokens=120)

    def squeezed(config: dict | None) -> list[str]:
        llm = char_llm if config is None else LLM(
            model=str(char_model), kv_cache_memory_bytes="32M", structured_outputs_config=config
        )  # fmt: skip
        samples = llm.generate(["{"], params, use_tqdm=False)[0].outputs
        # Free whitespace can run to max_tokens; without it every object closes.
        assert config is None or all(s.finish_reason == "stop" for s in samples)
        return [s.text.replace(", ", ",").replace(": ", ":") for s in samples]

    assert any(re.search(r"\s", text) for text in squeezed(None))
    assert not any(re.search(r"\s", text) for text in squeezed({"disable_any_whitespace": True}))


def test_whitespace_runs_are_bounded_so_replies_close(char_llm) -> None:
    """By default whitespace between JSON tokens stays allowed (indentation) but bounded
    (MAX_JSON_WHITESPACE): a random model at a high temperature, free to emit whitespace
    one character a token, still closes every object within max_tokens."""
    from pagedllm.structured_output.spec import MAX_JSON_WHITESPACE

    schema = {
        "type": "object",
        "properties": {"b": {"enum": [1, 2]}, "c": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["b", "c"],
    }
    params = constrained("json", schema, temperature=1.5, seed=0, n=16, max_tokens=400)
    samples = char_llm.generate(["{"], params, use_tqdm=False)[0].outputs
    runs = [len(run) for s in samples for run in re.findall(r"\s+", s.text)]
    assert all(s.finish_reason == "stop" for s in samples)
    assert max(runs) <= MAX_JSON_WHITESPACE and max(runs) > 1
    for s in samples:
        jsonschema.validate(json.loads(s.text), schema)


def test_forced_tool_calls_are_compact_json(smollm) -> None:
    """Free JSON whitespace let SmolLM2 fill a forced call with blanks (seen looping to
    max_tokens); the tool-choice constraint allows none outside strings."""
    from pagedllm.entrypoints.openai.tool_choice import plan_tool_choice

    parameters = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}}
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}
    constraint = plan_tool_choice([tool], "required", False, None).structured_outputs()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    # Eight seeds in one batch (each row keeps its own seed and grammar): a batch of 8
    # decodes in about the time of one request.
    params = [
        SamplingParams(seed=i, max_tokens=80, structured_outputs=constraint) for i in range(8)
    ]
    outputs = smollm.chat([messages] * 8, params, tools=[tool], use_tqdm=False)
    assert len(outputs) == 8
    for output in outputs:
        out = output.outputs[0]
        assert out.finish_reason == "stop" and "\n" not in out.text
        assert json.loads(out.text)[0]["name"] == "get_weather"


def test_grammars_are_built_off_the_engine_loop_once_for_all_samples(
    smollm_in_process, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A constraint's grammar is built on the compile threads, once for the n samples: while
    it builds, a plain request runs to its end (a deep schema's build took seconds on the
    engine's loop, once per sample, stalling every stream)."""
    from pagedllm.structured_output import manager

    release, builds = threading.Event(), []
    build = manager.build_grammar_spec

    def slow_build(constraint: StructuredOutputsParams):
        builds.append(threading.current_thread().name)
        assert release.wait(timeout=60)
        return build(constraint)

    monkeypatch.setattr(manager, "build_grammar_spec", slow_build)
    engine = smollm_in_process.llm_engine
    choice = constrained("choice", ["left", "right", "ahead"], n=4, max_tokens=8)
    engine.add_request("constrained", "Which way?", choice)
    engine.add_request("plain", "1 2 3", SamplingParams(max_tokens=4, ignore_eos=True))
    finished: set[str] = set()
    samples: dict[int, str] = {}

    def step() -> None:
        for output in engine.step():
            if output.request_id == "constrained":
                samples.update({c.index: c.text for c in output.outputs if c.finished()})
            if output.finished:
                finished.add(output.request_id)

    for _ in range(50):
        step()
        if "plain" in finished:
            break
    assert "plain" in finished and not samples
    release.set()
    while engine.has_unfinished_requests():
        step()
    assert sorted(samples) == [0, 1, 2, 3] and set(samples.values()) <= {"left", "right", "ahead"}
    assert len(builds) == 1 and builds[0].startswith("grammar")


def nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ({"choice": [f"word{i:05d}" for i in range(30_000)]}, "PAGEDLLM_MAX_GRAMMAR_BYTES"),
        ({"regex": "a" * 300_000}, "PAGEDLLM_MAX_GRAMMAR_BYTES"),
        ({"json": "[" * 200 + "]" * 200}, "nests deeper than 128"),
        ({"json": {"type": "object", "properties": {"a": nested(100)}}}, "nests deeper than 128"),
    ],
    ids=["choices", "regex", "schema-text", "schema-dict"],
)
def test_constraints_past_the_bounds_are_refused(smollm, constraint: dict, message: str) -> None:
    params = SamplingParams(structured_outputs=StructuredOutputsParams(**constraint))
    with pytest.raises(ValueError, match=message):
        smollm.generate("Hi", params, use_tqdm=False)
    assert not smollm.llm_engine.has_unfinished_requests()


def test_compiled_grammars_are_kept_within_the_byte_budget(
    smollm_in_process, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PAGEDLLM_XGRAMMAR_CACHE_MB bounds what the engine keeps for reuse: distinct
    constraints of ~0.4 MB compiled each evict the oldest past 1 MB."""
    monkeypatch.setenv("PAGEDLLM_XGRAMMAR_CACHE_MB", "1")
    rng = random.Random(0)
    lists = [["".join(rng.choices(string.ascii_lowercase, k=7)) for _ in range(500)]] * 4
    lists = [[f"{i}{word}" for word in words] for i, words in enumerate(lists)]
    for words in lists:
        smollm_in_process.generate("Hi", constrained("choice", words, max_tokens=2), use_tqdm=False)
    cache = smollm_in_process.llm_engine.core.engine_core.structured_outputs._compiled
    sizes = {key: f.result().memory_size_bytes for key, f in cache.items()}
    ours = [size for key, size in sizes.items() if key.startswith("choice:") and len(key) > 4000]
    assert min(ours) > 250_000 and sum(sizes.values()) <= 1 << 20
    assert 1 <= len(ours) < 4


def test_a_queued_compile_nobody_waits_for_is_dropped(
    smollm_in_process, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both compile threads busy, a third constraint queued: its request aborted, the
    compile is cancelled before it runs (a client that went away holds no thread later)."""
    from pagedllm.structured_output import manager

    release, built = threading.Event(), []
    build = manager.build_grammar_spec

    def slow_build(constraint: StructuredOutputsParams):
        built.append(constraint.choice)
        assert release.wait(timeout=60)
        return build(constraint)

    monkeypatch.setattr(manager, "build_grammar_spec", slow_build)
    engine = smollm_in_process.llm_engine
    for name in ("one", "two", "three"):
        engine.add_request(name, "Pick:", constrained("choice", [name, "other"], max_tokens=4))
    for _ in range(20):
        engine.step()
        if len(built) == 2:
            break
    engine.abort_request(["three"])
    engine.step()
    release.set()
    while engine.has_unfinished_requests():
        engine.step()
    assert sorted(c[0] for c in built) == ["one", "two"]
    cache = engine.engine_core.structured_outputs._compiled
    assert not [key for key in cache if '"three"' in key]


def test_an_ambiguous_regex_fails_its_own_request_only(smollm_in_process) -> None:
    """``([a-z]*)*`` twelve times: xgrammar's mask for it costs more with every token
    (~0.8 s a token after 50), and every request's step waits for the mask. The request
    fails once its own mask takes longer than the bound; the request beside it gets what it
    gets alone, and the failed one never reached its max_tokens. Sent again, the same
    constraint is refused at once (no token, no slow step)."""
    llm = smollm_in_process
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    alone = llm.generate("Count to ten:", greedy, use_tqdm=False)[0].outputs[0]
    slow = constrained("regex", "([a-z]*)*" * 12, max_tokens=400, temperature=0.0)
    slow_req, beside = llm.generate(
        ["Write letters:", "Count to ten:"], [slow, greedy], use_tqdm=False
    )
    assert slow_req.outputs[0].finish_reason == "error"
    assert 1 < len(slow_req.outputs[0].token_ids) < 400
    assert beside.outputs[0].token_ids == alone.token_ids
    again = llm.generate("Write letters:", slow, use_tqdm=False)[0].outputs[0]
    assert again.finish_reason == "error" and again.token_ids == []


def test_a_mask_past_the_deadline_fails_its_request_while_the_others_go_on(
    smollm_in_process, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain of alternatives that all match the same text: xgrammar's mask for it takes
    longer with every token (3,000 links: 26 s for one mask); nothing stops a fill once
    begun. With the deadline at 0.05 s, the mask for its second token (~0.2 s for 600
    links) is left to finish on its thread and the request fails at once, while the
    request beside it gets what it gets alone."""
    from pagedllm.structured_output import mask_fill
    from pagedllm.structured_output.spec import constraint_key

    monkeypatch.setattr(mask_fill, "FILL_DEADLINE_S", 0.05)
    links = 600
    chain = (
        "root ::= r0\n"
        + "\n".join(f'r{i} ::= r{i + 1} | r{i + 1} "x"' for i in range(links))
        + f'\nr{links} ::= "y"'
    )
    llm = smollm_in_process
    greedy = SamplingParams(temperature=0.0, max_tokens=16)
    alone = llm.generate("Count to ten:", greedy, use_tqdm=False)[0].outputs[0]
    ambiguous = constrained("grammar", chain, max_tokens=64, temperature=0.0)
    slow_req, beside = llm.generate(
        ["Write y then x:", "Count to ten:"], [ambiguous, greedy], use_tqdm=False
    )
    assert slow_req.outputs[0].finish_reason == "error"
    assert len(slow_req.outputs[0].token_ids) < 4
    assert beside.outputs[0].token_ids == alone.token_ids
    # Failed by the deadline (the bound's strikes would say "the bound is 0.1 s a token").
    outputs = llm.llm_engine.core.engine_core.structured_outputs
    key = constraint_key(ambiguous.structured_outputs)
    assert "took longer than 0.05 s" in outputs._too_slow[key]


def test_a_slow_mask_fails_only_the_rows_slow_alone(
    smollm_in_process, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the bound at zero every step's fill is over it and every constrained row's own
    fill too: the constrained request fails at its second strike (the mask for its second
    token), with one token; the unconstrained one in the same steps finishes as alone."""
    from pagedllm.structured_output import mask_fill

    monkeypatch.setattr(mask_fill, "SLOW_FILL_S", 0.0)
    llm = smollm_in_process
    greedy = SamplingParams(temperature=0.0, max_tokens=16)
    alone = llm.generate("Count to ten:", greedy, use_tqdm=False)[0].outputs[0]
    choice = constrained("choice", ["antidisestablishmentarianism, a long word"], max_tokens=16)
    outs = llm.generate(["Yes or no?", "Count to ten:"], [choice, greedy], use_tqdm=False)
    assert outs[0].outputs[0].finish_reason == "error"
    assert len(outs[0].outputs[0].token_ids) == 1
    assert outs[1].outputs[0].token_ids == alone.token_ids


def test_a_constraint_that_allows_no_token_fails_its_request_only(smollm) -> None:
    """``choice: ["yes"]`` with ``allowed_token_ids`` naming another token: the mask allows
    nothing, so the request fails as its input's (the server's 400), with no token, and the
    request beside it gets what it gets alone (at greedy and at a temperature)."""
    tokenizer = smollm.get_tokenizer()
    other = tokenizer.encode(" zebra", add_special_tokens=False)[0]
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    alone = smollm.generate("Count to ten:", greedy, use_tqdm=False)[0].outputs[0]
    for temperature in (0.0, 0.8):
        impossible = constrained(
            "choice", ["yes"], max_tokens=8, temperature=temperature, allowed_token_ids=[other]
        )
        failed, beside = smollm.generate(
            ["Say yes:", "Count to ten:"], [impossible, greedy], use_tqdm=False
        )
        assert failed.outputs[0].finish_reason == "error" and failed.outputs[0].token_ids == []
        assert beside.outputs[0].token_ids == alone.token_ids
