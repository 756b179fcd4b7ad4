"""Orchestration: the monitor loop, status, and (later) the plan executor."""
