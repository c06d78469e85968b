"""Tensor and pipeline parallelism over ``torch.distributed`` (gloo on the CPU).

``sizes`` is torch-free (config validation imports it); ``parallel_state`` and
``communication`` import torch and run inside worker processes.
"""
