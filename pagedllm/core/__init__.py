"""The torch-free heart of the engine: requests, the paged block pool, the scheduler.

Nothing in this package imports torch: it deals in ints, lists and hashes, so it can be
tested on its own by feeding the scheduler fabricated model-runner outputs.
"""
