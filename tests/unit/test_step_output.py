"""A launched step's read-back (``LaunchedStep.resolve``) on the CPU: each request's row of
the sampled ids, and containers the garbage collector stops tracking."""

from __future__ import annotations

import gc

import torch

from pagedllm.worker.step_output import LaunchedStep, SampledOnDevice


def launched(req_ids: list[str], sampled_rows: list[int], tokens: list[int]) -> LaunchedStep:
    ids = torch.tensor(tokens, dtype=torch.int64)
    sampled = SampledOnDevice(ids, ids, None, [], None)
    return LaunchedStep(req_ids, sampled_rows, [], sampled, None)


def test_every_request_sampled_gets_its_row() -> None:
    output, tokens = launched(["a", "b", "c"], [0, 1, 2], [7, 8, 9]).resolve()
    assert output.req_ids == ["a", "b", "c"] and tokens == [7, 8, 9]
    assert [list(s) for s in output.sampled_token_ids] == [[7], [8], [9]]
    assert output.logprobs is None


def test_a_chunk_that_does_not_sample_gets_no_token() -> None:
    output, tokens = launched(["a", "b", "c"], [0, 2], [7, 9]).resolve()
    assert [list(s) for s in output.sampled_token_ids] == [[7], [], [9]]
    assert tokens == [7, 9]


def test_a_step_without_samples_reports_empty_rows() -> None:
    step = LaunchedStep(["a", "b"], [], [], None, None)
    output, tokens = step.resolve()
    assert [list(s) for s in output.sampled_token_ids] == [[], []] and tokens == []


def test_the_rows_are_dropped_from_the_collectors_tracking() -> None:
    """Rows kept tracked were promoted with the step's outputs and brought on full passes
    of the collector (~40 ms at 1,024 requests); tuples of ints are untracked at its first
    look."""
    output, _ = launched(["a", "b", "c"], [0, 1, 2], [7, 8, 9]).resolve()
    partial, _ = launched(["a", "b", "c"], [0, 2], [7, 9]).resolve()
    gc.collect()
    rows = [*output.sampled_token_ids, *partial.sampled_token_ids]
    assert not any(gc.is_tracked(row) for row in rows)
