"""Orchestration: the monitor loop, the policy in force, status, and the plan executor with its runs."""
