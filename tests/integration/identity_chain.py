"""Decisions for the two-stage ``identity-chain`` pipeline, shared by the live tests."""

from __future__ import annotations

from varipipe.records import Decision, StageDecision


def decision(first="fast", b1=4, r1=1, second="fast", b2=4, r2=1, wait=0.005) -> Decision:
    return Decision(stages=(StageDecision("first", first, b1, r1, "cpu:1", wait),
                            StageDecision("second", second, b2, r2, "cpu:1", wait)), policy="test")
