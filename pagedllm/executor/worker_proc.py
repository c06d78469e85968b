"""One rank of the ``mp`` backend: a worker process started by ``MultiprocExecutor``,
serving calls (through ``worker.Worker``) until told to stop or until its parent (the
engine core) is gone.

    python -m pagedllm.executor.worker_proc   (WorkerArgs pickled on stdin)
"""

from __future__ import annotations

import pickle
import sys

import zmq

from pagedllm.engine.heap import freeze_built_engine, freeze_library_heap
from pagedllm.executor.messages import READY_SEQ, Call, Reply, WorkerArgs
from pagedllm.executor.parent_watch import exit_with_parent
from pagedllm.executor.replies import portable
from pagedllm.executor.worker import Worker, prepare_rank_process
from pagedllm.logger import init_logger

logger = init_logger(__name__)


def serve(args: WorkerArgs) -> None:
    context = zmq.Context()
    inbox = context.socket(zmq.PULL)
    inbox.connect(args.inbox_address)
    results = context.socket(zmq.PUSH)
    results.connect(args.results_address)
    try:
        freeze_library_heap(own_process=True)
        worker = Worker(args.config, args.rank, args.init_method, args.timeout_s)
    except Exception as exc:
        logger.exception("Rank %d failed to start", args.rank)
        results.send(encode_reply(Reply(READY_SEQ, args.rank, False, exc)))
        return
    results.send(encode_reply(Reply(READY_SEQ, args.rank, True)))
    while True:
        call: Call = pickle.loads(inbox.recv())
        reply = worker.answer(call)
        results.send(encode_reply(reply))
        if call.method == "initialize_kv_cache" and reply.ok:
            freeze_built_engine()  # the rank's last building call
        if call.method == "shutdown":
            break
    results.close(linger=1000)
    inbox.close(linger=0)
    context.term()


def encode_reply(reply: Reply) -> bytes:
    return pickle.dumps(portable(reply))


def main() -> None:
    args: WorkerArgs = pickle.load(sys.stdin.buffer)
    exit_with_parent(sys.stdin.fileno())
    parallel = args.config.parallel_config
    # Every rank of the mp backend is on this machine.
    prepare_rank_process(args.rank, parallel.tensor_parallel_size * parallel.pipeline_parallel_size)
    serve(args)


if __name__ == "__main__":
    main()
