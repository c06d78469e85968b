"""When a request is done, judged on token ids alone (stop strings are the detokenizer's)."""

from __future__ import annotations

from pagedllm.core.request import Request, RequestStatus


def check_stop(request: Request, max_model_len: int) -> bool:
    """Set the request's finished status if its last token ends it; return whether it did.

    Order as in vLLM: the length cap wins over eos; ``min_tokens`` holds back eos and stop ids
    (the sampler also masks them) but never the length cap.
    """
    # Called for every sampled token: the request's lists are read, not its properties.
    params = request.sampling_params
    output = request.output_token_ids
    if len(request.all_token_ids) >= max_model_len or len(output) >= request.max_tokens:
        request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return True
    if len(output) < params.min_tokens:
        return False
    last = output[-1]
    if not params.ignore_eos and last == request.eos_token_id:
        request.status = RequestStatus.FINISHED_STOPPED
        return True
    if last in params.all_stop_token_ids:
        request.status = RequestStatus.FINISHED_STOPPED
        request.stop_reason = last
        return True
    return False
