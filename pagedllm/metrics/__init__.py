"""Per-step and per-request statistics, and the periodic log line."""
