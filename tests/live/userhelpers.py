"""A user module's helper: the smoke test's function calls it on the node, so the module must travel
with the job (`api/user_code.py` stages the user's own modules)."""

from __future__ import annotations


def shout(text: str) -> str:
    return text.upper() + "!"
