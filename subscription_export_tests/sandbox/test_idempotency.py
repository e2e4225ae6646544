"""The idempotency store: claim, replay, mismatch, in flight, abandon."""

from __future__ import annotations

from subscription_export.sandbox.idempotency import IdempotencyStore, fingerprint


def test_fingerprint_ignores_key_order_but_not_values() -> None:
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint("PUT", "/x", {"a": 1}) != fingerprint("POST", "/x", {"a": 1})


def test_claim_lifecycle() -> None:
    store = IdempotencyStore()
    assert store.begin("k", "f1").outcome == "new"
    assert store.begin("k", "f1").outcome == "in_flight"
    assert store.begin("k", "f2").outcome == "mismatch"
    store.complete("k", {"status": 200})
    replay = store.begin("k", "f1")
    assert (replay.outcome, replay.stored) == ("replay", {"status": 200})
    assert store.begin("k", "f2").outcome == "mismatch"
    assert len(store) == 1


def test_abandoned_key_can_be_claimed_again() -> None:
    store = IdempotencyStore()
    store.begin("k", "f1")
    store.abandon("k")
    assert store.begin("k", "f1").outcome == "new"
    store.complete("k", "answer")
    store.abandon("k")  # a completed key is never released
    assert store.begin("k", "f1").outcome == "replay"
