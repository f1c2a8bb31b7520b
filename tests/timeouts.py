"""How long a test waits for what a simulated cloud does on this one machine.

These bound failures only: a passing test never waits for them (a pool's entry returns as soon as
its nodes join). A simulated cloud runs every machine's Ray node on the test machine's two cores,
beside three other test workers, so a boot that takes 20 s on a quiet day can take minutes on a
loaded one: on 2026-12-07, with the machine at about half its usual speed (load 11-13), a
2-node simulated AWS pool's worker had not joined 120 s after the launch in two tests at once.
A boot timeout that a slow day can hit fails tests for the day, not for the code.
"""

from __future__ import annotations

SIM_BOOT_TIMEOUT = 300.0
"""`sky.Compute(boot_timeout=...)` for a pool on a simulated cloud or in containers (seconds)."""
