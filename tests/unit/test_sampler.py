"""The sampling functions against independent references (plain Python loops and
transformers' logits processors), the Sampler's statistics and seeding, and the metadata
built from per-request state."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from transformers import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from pagedllm.model.layers.device_ops import TORCH_OPS
from pagedllm.model.layers.embedding import LMHead
from pagedllm.sample.metadata import PenaltyInputs, SamplingMetadata
from pagedllm.sample.penalties import apply_penalties, bin_counts
from pagedllm.sample.sampler import Sampler
from pagedllm.sample.top_k_top_p import apply_min_p, apply_top_k_top_p
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.request_state import RequestState
from pagedllm.worker.sampling_inputs import build_sampling_metadata

VOCAB = 300
CPU = torch.device("cpu")
NO_IDS = torch.empty(1, 0, dtype=torch.long)  # transformers' warpers ignore input_ids


def random_logits(seed: int, rows: int = 6, vocab: int = VOCAB) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g, dtype=torch.float32) * 3.0


def random_ids(g: torch.Generator, length: int, vocab: int = VOCAB) -> list[int]:
    # A narrow id range so that ids repeat and prompt and output overlap.
    return torch.randint(0, vocab // 10, (length,), generator=g).tolist()


def assert_same_kept(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same tokens dropped (-inf), same values for the kept ones."""
    kept = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(actual), kept), (
        f"kept sets differ in {(torch.isfinite(actual) != kept).sum().item()} places"
    )
    assert (actual[~kept] == float("-inf")).all()
    torch.testing.assert_close(actual[kept], expected[kept])


def metadata(
    rows: int,
    *,
    temperature: list[float] | None = None,
    greedy: list[bool] | None = None,
    top_k: list[int] | None = None,
    top_p: list[float] | None = None,
    min_p: list[float] | None = None,
    generators: dict[int, torch.Generator] | None = None,
    penalties: PenaltyInputs | None = None,
    banned: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> SamplingMetadata:
    greedy = greedy or [False] * rows
    temperature = temperature or [1.0] * rows
    return SamplingMetadata(
        temperature=torch.tensor([1.0 if g else t for g, t in zip(greedy, temperature)]),
        greedy=torch.tensor(greedy),
        all_greedy=all(greedy),
        all_random=not any(greedy),
        top_k=None if top_k is None else torch.tensor(top_k, dtype=torch.int64),
        top_p=None if top_p is None else torch.tensor(top_p, dtype=torch.float32),
        min_p=None if min_p is None else torch.tensor(min_p, dtype=torch.float32),
        generators=generators or {},
        penalties=penalties,
        banned=banned,
    )


# -- penalties -----------------------------------------------------------------------------


def penalty_inputs(
    prompts: list[list[int]],
    outputs: list[list[int]],
    presence: list[float],
    frequency: list[float],
    repetition: list[float],
    vocab: int = VOCAB,
) -> PenaltyInputs:
    """Built with plain loops, independently of ``bin_counts``."""
    rows = len(prompts)
    prompt_mask = torch.zeros(rows, vocab, dtype=torch.bool)
    output_counts = torch.zeros(rows, vocab)
    for r in range(rows):
        for t in prompts[r]:
            prompt_mask[r, t] = True
        for t in outputs[r]:
            output_counts[r, t] += 1
    return PenaltyInputs(
        prompt_mask=prompt_mask,
        output_counts=output_counts,
        presence=torch.tensor(presence),
        frequency=torch.tensor(frequency),
        repetition=torch.tensor(repetition),
    )


def reference_penalties(
    logits: torch.Tensor,
    prompts: list[list[int]],
    outputs: list[list[int]],
    presence: list[float],
    frequency: list[float],
    repetition: list[float],
) -> torch.Tensor:
    out = logits.clone()
    for r in range(out.shape[0]):
        for t in set(prompts[r]) | set(outputs[r]):
            value = out[r, t].item()
            out[r, t] = value / repetition[r] if value > 0 else value * repetition[r]
        for t, count in Counter(outputs[r]).items():
            out[r, t] -= frequency[r] * count
            out[r, t] -= presence[r]
    return out


def penalty_case(seed: int):
    g = torch.Generator().manual_seed(1000 + seed)
    rows = 6
    prompts = [random_ids(g, 12) for _ in range(rows)]
    outputs = [random_ids(g, n) for n in (0, 1, 5, 9, 20, 3)]
    presence = [0.0, 0.5, -0.7, 1.5, 0.0, 2.0]
    frequency = [0.0, 0.3, 0.0, -1.1, 0.8, 2.0]
    repetition = [1.0, 1.3, 0.7, 1.0, 2.0, 1.1]
    return prompts, outputs, presence, frequency, repetition


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_penalties_match_plain_loop(seed: int) -> None:
    logits = random_logits(seed)
    case = penalty_case(seed)
    expected = reference_penalties(logits, *case)
    actual = apply_penalties(logits.clone(), penalty_inputs(*case))
    torch.testing.assert_close(actual, expected)
    assert not torch.equal(actual, logits)  # the case does penalize something


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repetition_penalty_matches_transformers(seed: int) -> None:
    logits = random_logits(seed)
    prompts, outputs, _, _, repetition = penalty_case(seed)
    rows = logits.shape[0]
    actual = apply_penalties(
        logits.clone(),
        penalty_inputs(prompts, outputs, [0.0] * rows, [0.0] * rows, repetition),
    )
    for r in range(rows):
        ids = torch.tensor([prompts[r] + outputs[r]])
        expected = RepetitionPenaltyLogitsProcessor(penalty=repetition[r])(ids, logits[r : r + 1])
        torch.testing.assert_close(actual[r : r + 1], expected)


def test_frequency_and_presence_ignore_prompt_tokens() -> None:
    logits = torch.zeros(1, 8)
    p = penalty_inputs(
        [[1, 2]], [[2, 3, 3]], presence=[0.5], frequency=[0.25], repetition=[1.0], vocab=8
    )
    out = apply_penalties(logits, p)
    expected = torch.zeros(1, 8)
    expected[0, 2] = -0.75
    expected[0, 3] = -1.0
    torch.testing.assert_close(out, expected)


def test_bin_counts_ignores_padding() -> None:
    ids = torch.tensor([[3, 1, 3, 5, 5], [0, 5, 5, 5, 5]])  # 5 = vocab size = padding
    counts = bin_counts(ids, 5)
    assert counts.tolist() == [[0, 1, 0, 2, 0], [1, 0, 0, 0, 0]]


# -- temperature, min-p, top-k, top-p ------------------------------------------------------


def reference_top_k(row: list[float], k: int) -> list[float]:
    kth = sorted(row, reverse=True)[k - 1]
    return [v if v >= kth else float("-inf") for v in row]


def reference_top_p(row: list[float], p: float) -> list[float]:
    """Keep a token while the mass of the tokens sorted before it is below p."""
    finite = torch.tensor(row, dtype=torch.float64)
    probs = finite.softmax(dim=0).tolist()
    out = [float("-inf")] * len(row)
    above = 0.0
    for i in sorted(range(len(row)), key=lambda i: -row[i]):
        if above >= p:
            break
        out[i] = row[i]
        above += probs[i]
    return out


def reference_min_p(row: list[float], min_p: float) -> list[float]:
    probs = torch.tensor(row, dtype=torch.float64).softmax(dim=0)
    keep = probs >= min_p * probs.max()
    return [v if k else float("-inf") for v, k in zip(row, keep.tolist())]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_per_row_matches_references(seed: int) -> None:
    logits = random_logits(seed)
    ks = [VOCAB, 1, 2, 17, VOCAB - 1, 150]
    actual = apply_top_k_top_p(logits, torch.tensor(ks), None)
    for r, k in enumerate(ks):
        expected = torch.tensor([reference_top_k(logits[r].tolist(), k)])
        assert_same_kept(actual[r : r + 1], expected)
        assert_same_kept(actual[r : r + 1], TopKLogitsWarper(top_k=k)(NO_IDS, logits[r : r + 1]))
        assert torch.isfinite(actual[r]).sum().item() == k


def test_top_k_keeps_ties_at_the_kth_value() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.5, 2.0], [4.0, 4.0, 4.0, 1.0, 0.0, 4.0]])
    actual = apply_top_k_top_p(logits, torch.tensor([2, 1]), None)
    inf = float("-inf")
    assert actual.tolist() == [[inf, 3.0, 2.0, 2.0, inf, 2.0], [4.0, 4.0, 4.0, inf, inf, 4.0]]
    for r, k in enumerate((2, 1)):
        assert_same_kept(actual[r : r + 1], TopKLogitsWarper(top_k=k)(NO_IDS, logits[r : r + 1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_p_per_row_matches_references(seed: int) -> None:
    logits = random_logits(seed) / 3.0  # flatter: the nucleus spans many tokens
    ps = [1.0, 0.9, 0.5, 0.1, 0.99, 0.75]
    actual = apply_top_k_top_p(logits, None, torch.tensor(ps))
    for r, p in enumerate(ps):
        assert_same_kept(actual[r : r + 1], TopPLogitsWarper(top_p=p)(NO_IDS, logits[r : r + 1]))
        assert_same_kept(actual[r : r + 1], torch.tensor([reference_top_p(logits[r].tolist(), p)]))
    kept = torch.isfinite(actual).sum(dim=1).tolist()
    assert kept[0] == VOCAB and 1 < kept[3] < kept[2] < kept[5] < kept[1] < kept[4] < VOCAB


@pytest.mark.parametrize("p", [1e-9, 1e-4, 0.01])
def test_tiny_top_p_keeps_exactly_the_argmax(p: float) -> None:
    logits = random_logits(7) / 5.0  # the top token holds far more than p
    actual = apply_top_k_top_p(logits, None, torch.full((logits.shape[0],), p))
    kept = torch.isfinite(actual)
    assert kept.sum(dim=1).tolist() == [1] * logits.shape[0]
    assert torch.equal(kept.float().argmax(dim=1), logits.argmax(dim=1))


def test_top_k_one_keeps_exactly_the_argmax() -> None:
    logits = random_logits(8)
    actual = apply_top_k_top_p(logits, torch.ones(logits.shape[0], dtype=torch.long), None)
    assert torch.isfinite(actual).sum(dim=1).tolist() == [1] * logits.shape[0]
    assert torch.equal(actual.argmax(dim=1), logits.argmax(dim=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_p_per_row_matches_references(seed: int) -> None:
    logits = random_logits(seed)
    min_ps = [0.0, 0.05, 0.2, 0.5, 1.0, 0.01]
    actual = apply_min_p(logits, torch.tensor(min_ps))
    for r, m in enumerate(min_ps):
        expected = torch.tensor([reference_min_p(logits[r].tolist(), m)])
        assert_same_kept(actual[r : r + 1], expected)
        if m > 0:  # transformers refuses min_p=0
            assert_same_kept(
                actual[r : r + 1], MinPLogitsWarper(min_p=m)(NO_IDS, logits[r : r + 1])
            )
    assert torch.isfinite(actual[0]).all() and torch.isfinite(actual[4]).sum() == 1


def truncate_like_the_sampler(
    logits: torch.Tensor, t: list[float], k: list[int], p: list[float], m: list[float]
) -> torch.Tensor:
    """The sampler's order: temperature, then min-p, then top-k and top-p."""
    scaled = logits / torch.tensor(t).unsqueeze(1)
    scaled = apply_min_p(scaled, torch.tensor(m))
    return apply_top_k_top_p(scaled, torch.tensor(k), torch.tensor(p))


def transformers_chain(row: torch.Tensor, t: float, k: int, p: float, m: float) -> torch.Tensor:
    """vLLM's order with transformers' warpers: min-p sees the temperature-scaled logits."""
    scores = TemperatureLogitsWarper(t)(NO_IDS, row.unsqueeze(0))
    if m > 0:
        scores = MinPLogitsWarper(min_p=m)(NO_IDS, scores)
    scores = TopKLogitsWarper(top_k=k)(NO_IDS, scores)
    return TopPLogitsWarper(top_p=p)(NO_IDS, scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_truncation_batch_matches_transformers_chain(seed: int) -> None:
    logits = random_logits(seed, rows=8)
    # Each row its own parameters; disabled means k = vocab, p = 1.0, min_p = 0.0.
    t = [1.0, 0.7, 1.5, 0.3, 2.0, 1.0, 0.9, 1.2]
    k = [VOCAB, 40, VOCAB, 5, 100, 1, VOCAB, 60]
    p = [1.0, 1.0, 0.8, 0.95, 0.6, 1.0, 0.3, 0.9]
    m = [0.0, 0.0, 0.0, 0.1, 0.02, 0.0, 0.05, 0.3]
    actual = truncate_like_the_sampler(logits, t, k, p, m)
    for r in range(logits.shape[0]):
        expected = transformers_chain(logits[r], t[r], k[r], p[r], m[r])
        assert_same_kept(actual[r : r + 1], expected)
    assert torch.isfinite(actual[0]).all()
    assert torch.isfinite(actual[5]).sum() == 1


# -- the sampler ---------------------------------------------------------------------------


def test_all_greedy_returns_argmax() -> None:
    logits = random_logits(0)
    tokens = Sampler()(logits.clone(), metadata(6, greedy=[True] * 6)).token_ids
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, logits.argmax(dim=1))


def test_greedy_rows_stay_exact_in_a_mixed_batch() -> None:
    torch.manual_seed(0)
    logits = random_logits(1, rows=8) * 0.05  # nearly flat: a sampled row rarely hits argmax
    greedy = [True, False, True, False, False, True, True, False]
    md = metadata(
        8,
        greedy=greedy,
        temperature=[1.0, 2.0, 1.0, 1.5, 1.0, 1.0, 1.0, 3.0],
        top_k=[VOCAB, VOCAB, VOCAB, 200, VOCAB, VOCAB, VOCAB, VOCAB],
        top_p=[1.0, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        min_p=[0.0, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0, 0.0],
    )
    argmax = logits.argmax(dim=1)
    for _ in range(5):
        tokens = Sampler()(logits.clone(), md).token_ids
        rows = torch.tensor(greedy)
        assert torch.equal(tokens[rows], argmax[rows])
        assert not torch.equal(tokens[~rows], argmax[~rows])


def test_greedy_argmax_sees_the_penalties() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0], [5.0, 4.0, 3.0, 0.0]])
    p = penalty_inputs(
        [[0], [1]], [[], [0, 0]], [0.0, 0.0], [0.0, 1.0], [2.0, 1.0], vocab=4
    )  # row 0: 5 / 2 < 4; row 1: 5 - 2 < 4
    tokens = Sampler()(logits, metadata(2, greedy=[True, True], penalties=p)).token_ids
    assert tokens.tolist() == [1, 1]


def test_banned_ids_are_never_sampled() -> None:
    torch.manual_seed(0)
    rows, vocab = 400, 6
    logits = torch.zeros(rows, vocab)
    logits[:, 2] = 6.0  # the banned ids are the most likely ones by far
    logits[:, 4] = 5.0
    banned_rows = torch.arange(rows - 1).repeat_interleave(2)  # the last row is not banned
    banned_cols = torch.tensor([2, 4]).repeat(rows - 1)
    greedy = [r % 4 == 0 for r in range(rows)]
    md = metadata(rows, greedy=greedy, banned=(banned_rows, banned_cols))
    tokens = Sampler()(logits.clone(), md).token_ids
    assert not torch.isin(tokens[:-1], torch.tensor([2, 4])).any()
    assert tokens[-1].item() in (2, 4)
    assert torch.equal(tokens[torch.tensor(greedy)], torch.zeros(sum(greedy), dtype=torch.long))
    # Without the ban the same batch does pick them.
    unbanned = Sampler()(logits.clone(), metadata(rows, greedy=greedy)).token_ids
    assert torch.isin(unbanned, torch.tensor([2, 4])).float().mean() > 0.9


def chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    observed = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * tokens.numel()
    support = expected > 0
    assert (observed[~support] == 0).all(), "a token of probability 0 was sampled"
    return (((observed - expected) ** 2)[support] / expected[support]).sum().item()


def test_sampling_frequencies_converge_to_softmax() -> None:
    torch.manual_seed(1234)
    draws = 20_000
    row = torch.tensor([1.0, 0.5, 0.0, -0.5, -2.0])
    temperature = 0.8
    tokens = Sampler()(
        row.repeat(draws, 1), metadata(draws, temperature=[temperature] * draws)
    ).token_ids
    probs = (row / temperature).softmax(dim=0)
    # 4 degrees of freedom: P(chi2 > 25) ~ 5e-5. A wrong temperature scores in the hundreds.
    assert chi_square(tokens, probs) < 25.0
    assert chi_square(tokens, row.softmax(dim=0)) > 100.0


def test_truncated_sampling_frequencies_match_transformers_chain() -> None:
    torch.manual_seed(99)
    draws = 20_000
    row = torch.tensor([2.0, 1.6, 1.5, 1.0, 0.2, -0.5, -3.0])
    t, k, p, m = 1.3, 5, 0.9, 0.05
    md = metadata(
        draws, temperature=[t] * draws, top_k=[k] * draws, top_p=[p] * draws, min_p=[m] * draws
    )
    tokens = Sampler()(row.repeat(draws, 1), md).token_ids
    probs = transformers_chain(row, t, k, p, m).softmax(dim=-1)[0]
    assert 2 < (probs > 0).sum().item() < k  # top-p cut into the top-k set
    assert chi_square(tokens, probs) < 25.0


def test_min_p_applies_after_temperature() -> None:
    torch.manual_seed(5)
    draws = 4000
    row = torch.tensor([0.0, -1.0, -5.0])
    # t = 4: scaled probabilities relative to the top are 1, 0.78, 0.29; unscaled 1, 0.37, 0.007.
    md = metadata(draws, temperature=[4.0] * draws, min_p=[0.5] * draws)
    assert set(Sampler()(row.repeat(draws, 1), md).token_ids.tolist()) == {0, 1}
    # t = 0.5: scaled 1, 0.14, 5e-5; unscaled 1, 0.37, 0.007.
    md = metadata(draws, temperature=[0.5] * draws, min_p=[0.2] * draws)
    assert set(Sampler()(row.repeat(draws, 1), md).token_ids.tolist()) == {0}


def seeded_row_tokens(position: int, others: int, steps: int, global_seed: int) -> list[int]:
    """Tokens of a row seeded with 777, at ``position`` in a batch of ``others`` + 1 rows whose
    other rows are random, greedy or truncated and change at each step."""
    torch.manual_seed(global_seed)
    generator = torch.Generator().manual_seed(777)
    rows = others + 1
    noise = torch.Generator().manual_seed(global_seed)
    out = []
    for step in range(steps):
        logits = torch.randn(rows, VOCAB, generator=noise)
        logits[position] = random_logits(100 + step, rows=1)[0] * 0.2  # flat: many choices
        greedy = [r != position and r % 3 == 1 for r in range(rows)]
        top_k = [VOCAB if r == position or r % 2 else 20 for r in range(rows)]
        top_p = [1.0 if r == position else 0.9 for r in range(rows)]
        min_p = [0.0 if r == position else 0.05 for r in range(rows)]
        temperature = [0.9 if r == position else 1.0 + r / 10 for r in range(rows)]
        trunc = {} if others == 0 else {"top_k": top_k, "top_p": top_p, "min_p": min_p}
        md = metadata(
            rows, temperature=temperature, greedy=greedy, generators={position: generator}, **trunc
        )
        out.append(Sampler()(logits, md).token_ids[position].item())
    return out


def test_seeded_row_is_independent_of_the_rest_of_the_batch() -> None:
    alone = seeded_row_tokens(position=0, others=0, steps=6, global_seed=1)
    small = seeded_row_tokens(position=1, others=2, steps=6, global_seed=2)
    large = seeded_row_tokens(position=4, others=6, steps=6, global_seed=3)
    assert alone == small == large
    assert len(set(alone)) > 1


def test_seeded_row_depends_on_its_seed() -> None:
    tokens = seeded_row_tokens(position=0, others=3, steps=6, global_seed=1)
    generator = torch.Generator().manual_seed(778)
    other = []
    for step in range(6):
        logits = random_logits(100 + step, rows=1) * 0.2
        other.append(
            Sampler()(logits, metadata(1, temperature=[0.9], generators={0: generator}))
            .token_ids[0]
            .item()
        )
    assert tokens != other


# -- metadata from request state -----------------------------------------------------------


def state(
    req_id: str, prompt: list[int], params: SamplingParams, outputs: tuple[int, ...] = ()
) -> RequestState:
    s = RequestState.create(req_id, prompt, params, [0], 0, CPU)
    s.token_ids.extend(outputs)
    return s


def test_metadata_with_no_truncation_or_penalties() -> None:
    states = [
        state("a", [1, 2], SamplingParams(temperature=0.0, top_k=5, top_p=0.5)),
        state("b", [3], SamplingParams(temperature=0.7, top_k=-1)),
        state("c", [4], SamplingParams(temperature=1.3, seed=11, top_k=VOCAB + 5)),
        state("d", [4], SamplingParams(temperature=0.5, top_k=VOCAB)),
    ]
    md = build_sampling_metadata(states, VOCAB, CPU)
    torch.testing.assert_close(md.temperature, torch.tensor([1.0, 0.7, 1.3, 0.5]))
    assert md.greedy.tolist() == [True, False, False, False]
    assert not md.all_greedy and not md.all_random
    assert md.top_k is None and md.top_p is None and md.min_p is None
    assert md.penalties is None and md.banned is None
    assert list(md.generators) == [2] and md.generators[2] is states[2].generator
    expected = torch.Generator().manual_seed(11)
    assert torch.equal(torch.rand(4, generator=md.generators[2]), torch.rand(4, generator=expected))


def test_metadata_all_greedy_and_all_random_flags() -> None:
    greedy = [state(str(i), [1], SamplingParams(temperature=0.0)) for i in range(3)]
    md = build_sampling_metadata(greedy, VOCAB, CPU)
    assert md.all_greedy and not md.all_random
    random = [state(str(i), [1], SamplingParams(temperature=1.0)) for i in range(3)]
    md = build_sampling_metadata(random, VOCAB, CPU)
    assert md.all_random and not md.all_greedy


def test_metadata_truncation_tensors() -> None:
    states = [
        state("a", [1], SamplingParams(top_k=5)),
        state("b", [1], SamplingParams(top_p=0.8)),
        state("c", [1], SamplingParams(min_p=0.1, top_k=VOCAB + 1)),
        state("d", [1], SamplingParams(temperature=0.0, top_k=3, top_p=0.2, min_p=0.4)),
    ]
    md = build_sampling_metadata(states, VOCAB, CPU)
    assert md.top_k is not None and md.top_k.dtype == torch.int64
    assert md.top_k.tolist() == [5, VOCAB, VOCAB, VOCAB]
    assert md.top_p is not None and md.min_p is not None
    torch.testing.assert_close(md.top_p, torch.tensor([1.0, 0.8, 1.0, 1.0]))
    torch.testing.assert_close(md.min_p, torch.tensor([0.0, 0.0, 0.1, 0.0]))


def test_metadata_of_rows_sharing_one_params_object() -> None:
    """An offline batch's rows share one SamplingParams: what it asks for reaches every
    row that holds it, and nothing reaches the rows that do not."""
    shared = SamplingParams(top_k=5, top_p=0.8, logit_bias={3: 2.0}, allowed_token_ids=[3, 4])
    plain = SamplingParams()
    states = [state("a", [1], shared), state("b", [1], plain), state("c", [1], shared)]
    md = build_sampling_metadata(states, VOCAB, CPU)
    assert md.top_k is not None and md.top_k.tolist() == [5, VOCAB, 5]
    assert md.top_p is not None and md.top_p.tolist() == pytest.approx([0.8, 1.0, 0.8])
    assert md.min_p is None and md.banned is None and md.processors is None
    assert md.bias is not None and md.bias[0].tolist() == [0, 2]
    assert md.allowed is not None and md.allowed.sum(dim=1).tolist() == [2, VOCAB, 2]
    same = build_sampling_metadata([state(str(i), [1], plain) for i in range(3)], VOCAB, CPU)
    assert same.top_k is None and same.top_p is None and same.bias is None


def test_metadata_penalties() -> None:
    g = torch.Generator().manual_seed(3)
    prompts = [random_ids(g, 7), random_ids(g, 2), random_ids(g, 11)]
    outputs = [random_ids(g, 4), [], random_ids(g, 9)]
    params = [
        SamplingParams(presence_penalty=0.5),
        SamplingParams(),
        SamplingParams(frequency_penalty=-0.3, repetition_penalty=1.4),
    ]
    states = [state(str(i), prompts[i], params[i], tuple(outputs[i])) for i in range(3)]
    md = build_sampling_metadata(states, VOCAB, CPU)
    expected = penalty_inputs(prompts, outputs, [0.5, 0.0, 0.0], [0.0, 0.0, -0.3], [1.0, 1.0, 1.4])
    assert md.penalties is not None
    assert torch.equal(md.penalties.prompt_mask, expected.prompt_mask)
    assert torch.equal(md.penalties.output_counts, expected.output_counts)
    for name in ("presence", "frequency", "repetition"):
        torch.testing.assert_close(getattr(md.penalties, name), getattr(expected, name))


def test_metadata_bans_stop_ids_only_below_min_tokens() -> None:
    def params(min_tokens: int, stop_ids: set[int]) -> SamplingParams:
        p = SamplingParams(min_tokens=min_tokens)
        p.all_stop_token_ids.update(stop_ids)  # what the input processor adds (eos, ...)
        return p

    states = [
        state("below", [1], params(3, {2, 9}), outputs=(5, 6)),
        state("reached", [1], params(2, {2, 9}), outputs=(5, 6)),
        state("none", [1], params(0, {2})),
        state("fresh", [1, 2, 3], params(1, {2, 7})),
    ]
    md = build_sampling_metadata(states, VOCAB, CPU)
    assert md.banned is not None
    rows, cols = md.banned
    assert rows.dtype == cols.dtype == torch.int64
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 2), (0, 9), (3, 2), (3, 7)]

    states = [state("reached", [1], params(2, {2}), outputs=(5, 6))]
    assert build_sampling_metadata(states, VOCAB, CPU).banned is None


def test_metadata_carried_over_keeps_the_fixed_fields_and_rebuilds_the_bans() -> None:
    p = SamplingParams(temperature=0.8, top_k=7, min_tokens=2, logit_bias={3: 1.0}, seed=4)
    p.all_stop_token_ids.add(2)
    states = [state("a", [1], p), state("b", [1], SamplingParams(temperature=0.5))]
    first = build_sampling_metadata(states, VOCAB, CPU)
    assert first.banned is not None
    states[0].token_ids.extend([5, 6])  # min_tokens reached: the stop id is allowed again
    again = build_sampling_metadata(states, VOCAB, CPU, previous=first)
    assert again.banned is None
    for name in ("temperature", "top_k", "bias", "generators", "fast_rows", "slow_rows"):
        assert getattr(again, name) is getattr(first, name)


def test_all_fast_rows_sample_like_the_split_path() -> None:
    """With every row on the top-k path, temperature divides the k candidates only; the
    seeded rows still draw exactly what they draw beside a full-vocabulary row."""
    from pagedllm.sampling_params import SamplingParams as SP

    torch.manual_seed(3)
    logits = torch.randn(3, 300) * 3
    cases = [(0.5, 10, 1.0, 1), (4.0, 40, 0.9, 2), (2.5, 60, 1.0, 3)]
    seeded = [SP(temperature=t, top_k=k, top_p=p, seed=s) for t, k, p, s in cases]
    alone = build_sampling_metadata(_states_for(seeded), 300, CPU)
    assert alone.slow_rows is None
    beside = build_sampling_metadata(_states_for([*seeded, SP(temperature=1.0)]), 300, CPU)
    assert beside.slow_rows is not None
    for _ in range(40):
        a = Sampler()(logits.clone(), alone).token_ids.tolist()
        b = Sampler()(torch.cat([logits, logits[:1]]), beside).token_ids.tolist()[:3]
        assert a == b


def test_sampler_with_built_metadata_respects_min_tokens_and_penalties() -> None:
    eos = 2
    p = SamplingParams(temperature=0.0, min_tokens=2, repetition_penalty=3.0)
    p.all_stop_token_ids.add(eos)
    s = state("a", [4], p)
    logits = torch.tensor([[0.0, 1.0, 9.0, 0.5, 1.2]])
    tokens = []
    for _ in range(3):
        md = build_sampling_metadata([s], 5, CPU)
        token = Sampler()(logits.clone(), md).token_ids.item()
        s.token_ids.append(token)
        tokens.append(token)
    # eos is banned for two tokens; 4 (prompt) is penalised to 0.4, then 1 to 0.33 < 0.5.
    assert tokens == [1, 3, eos]


# -- the top-k fast path -----------------------------------------------------------------


def _states_for(params_list):
    from pagedllm.worker.request_state import RequestState

    return [
        RequestState.create(f"r{i}", [1, 2], p, [0], 0, torch.device("cpu"))
        for i, p in enumerate(params_list)
    ]


def test_top_k_fast_path_samples_only_the_kept_tokens():
    from pagedllm.sample.top_k_top_p import apply_top_k_top_p
    from pagedllm.sampling_params import SamplingParams as SP
    from pagedllm.worker.sampling_inputs import build_sampling_metadata

    torch.manual_seed(0)
    vocab = 300
    params = [
        SP(temperature=1.0, top_k=k, top_p=p) for k, p in [(5, 1.0), (20, 0.7), (1, 1.0), (50, 0.3)]
    ]
    params.append(SP(temperature=1.0, top_p=0.9))  # no top_k: the full-vocabulary path
    md = build_sampling_metadata(_states_for(params), vocab, torch.device("cpu"))
    assert md.fast_rows is not None and md.fast_rows.tolist() == [0, 1, 2, 3]
    logits = torch.randn(len(params), vocab)
    kept = apply_top_k_top_p(logits.clone(), md.top_k, md.top_p) > float("-inf")
    counts = torch.zeros(len(params), vocab)
    for _ in range(400):
        tokens = Sampler()(logits.clone(), md).token_ids
        counts[torch.arange(len(params)), tokens] += 1
    assert bool(((counts > 0) <= kept).all()), "sampled a token outside top-k / top-p"
    assert (counts[0] > 0).sum() == 5 and (counts[2] > 0).sum() == 1


def test_seeded_rows_do_not_depend_on_the_path_of_other_rows():
    from pagedllm.sampling_params import SamplingParams as SP
    from pagedllm.worker.sampling_inputs import build_sampling_metadata

    torch.manual_seed(1)
    vocab = 300
    logits = torch.randn(1, vocab)
    seeded = SP(temperature=0.9, top_k=10, seed=5)
    results = []
    for others in ([], [SP(temperature=1.0)], [SP(temperature=1.0, top_k=3), SP(temperature=0.0)]):
        states = _states_for([*others, seeded])
        rows = logits.repeat(len(states), 1)
        md = build_sampling_metadata(states, vocab, torch.device("cpu"))
        results.append([Sampler()(rows.clone(), md).token_ids[-1].item() for _ in range(1)])
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("case", ["greedy", "top_k_top_p", "min_p"])
def test_bfloat16_logits_sample_as_their_float32_widening(case: str) -> None:
    """The LM head hands the sampler the model's dtype: the same tokens and logprobs as
    from the float32 copy it used to make (the widening is exact)."""
    logits = random_logits(7).to(torch.bfloat16)
    kwargs: dict = {
        "greedy": dict(greedy=[True] * 6),
        "top_k_top_p": dict(top_k=[5, 300, 1, 20, 7, 300], top_p=[0.9, 0.5, 1.0, 0.8, 1.0, 0.3]),
        "min_p": dict(min_p=[0.1] * 6, temperature=[0.7] * 6),
    }[case]
    results = []
    for values in (logits, logits.float()):
        gens = {i: torch.Generator().manual_seed(i) for i in range(6)}
        md = dataclasses.replace(metadata(6, generators=gens, **kwargs), max_num_logprobs=3)
        out = Sampler(seed=1)(values, md)
        assert out.logprobs is not None
        results.append((out.token_ids, out.logprobs.top_ids, out.logprobs.top_logprobs))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_the_lm_head_keeps_the_model_dtype() -> None:
    head = LMHead(VOCAB, 16, torch.bfloat16, TORCH_OPS)
    head.weight.data.normal_()
    hidden = torch.randn(3, 16).to(torch.bfloat16)
    logits = head(hidden)
    assert logits.dtype == torch.bfloat16 and logits.is_contiguous()
    assert torch.equal(logits, torch.nn.functional.linear(hidden, head.weight))
