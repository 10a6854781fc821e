"""The GPU runbook: prepared here, run in one call on a lent GPU machine (docs/gpu-runbook.md)."""
