"""The live smoke suite: one cheap pool per cloud, end to end (see tests/live/harness.py)."""
