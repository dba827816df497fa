"""The opspush benchmark: push (ticks, notifications) against the HTTP polling it replaces.

`python -m bench` (or `scripts/bench`) runs every scenario and writes `bench/results/`.
"""
