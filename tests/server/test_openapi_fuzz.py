"""Schemathesis over /openapi.json: requests generated from the schema, valid and invalid,
against a server on the tiny model. No response may be a 5xx, and every status must be one
the document lists. Bounded: a fixed seed and a few examples per operation."""

from __future__ import annotations

import pytest

from tests.server.conftest import API_KEY, start_server, stop_server, tiny_server_args

EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def fuzzed(tiny_chat_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    args = tiny_server_args(tiny_chat_model, "--max-model-len", "128", "--max-n", "4")
    server = start_server(args, log)
    yield server
    stop_server(server)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_server_errors_and_only_documented_statuses(fuzzed, mode):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error, status_code_conformance

    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    headers = {"Authorization": f"Bearer {API_KEY}"}
    failures: list[str] = []

    def fuzz(operation) -> None:
        strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case) -> None:
            response = case.call(base_url=fuzzed.url, headers=headers, timeout=60)
            try:
                case.validate_response(
                    response, checks=[not_a_server_error, status_code_conformance]
                )
            except Exception as exc:  # collected: one report for every operation
                failures.append(f"{operation.label}: {response.status_code} {exc}"[:600])

        run()

    for operation in operations:
        try:
            fuzz(operation)
        except Unsatisfiable:  # nothing to make invalid (e.g. GET /health has no inputs)
            assert mode == "negative"
    assert not failures, "\n".join(failures[:10])
    assert "Traceback" not in fuzzed.logs()
