"""Batch APIs answering one status per unit (ERP `$batch`, CRM `/batch`, accounting
`/journal/batch`): the rounds that keep a record's order, the per-item retries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import requests

from subscription_export.delivery.client_base import (
    DeliveryClient,
    DeliveryResult,
    OutboundItem,
    Unit,
    batch_idempotency_key,
    held_back,
)
from subscription_export.delivery.retry import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    is_retryable,
    raise_for_delivery,
    send,
)


class BatchClient(DeliveryClient):
    """Batch APIs answering one status per unit; only failed retryable units are resent.

    The server applies a batch's items independently, so if a subscription's earlier change
    failed while its later change succeeded, the retried earlier change would arrive after the
    later one (and be refused as stale). With `one_change_per_subscription`, items are sent in
    rounds - the first change of each subscription, then the second, ... - and a round is
    settled before the next starts, which keeps each subscription's changes in LSN order.
    """

    batch_path: ClassVar[str]
    batch_field: ClassVar[str]
    one_change_per_subscription: ClassVar[bool] = True
    max_batch_items: ClassVar[int] = 1000  # what the systems accept in one request

    def _send_items(self, items: Sequence[OutboundItem], blocked: set[str]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        for round_items in self._rounds(items):
            sent = [i for i in round_items if i.subscription_id not in blocked]
            results.extend(held_back(i) for i in round_items if i.subscription_id in blocked)
            for result in self._send_round(sent):
                if result.status == "dead_letter" and self.keeps_record_order:
                    blocked.add(result.subscription_id)
                results.append(result)
        return results

    def _rounds(self, items: Sequence[OutboundItem]) -> list[list[OutboundItem]]:
        if not self.one_change_per_subscription:
            return [list(items)] if items else []
        rounds: list[list[OutboundItem]] = []
        seen: Counter[str] = Counter()
        for item in items:
            position = seen[item.subscription_id]
            seen[item.subscription_id] += 1
            if position == len(rounds):
                rounds.append([])
            rounds[position].append(item)
        return rounds

    def _send_round(self, items: Sequence[OutboundItem]) -> list[DeliveryResult]:
        units = [unit for item in items for unit in item.units]
        outcome: dict[str, str | None] = {}
        attempts: dict[str, int] = {}
        for start in range(0, len(units), self.max_batch_items):
            done, tries = self._send_units(units[start : start + self.max_batch_items])
            outcome.update(done)
            attempts.update(tries)
        results = []
        for item in items:
            errors = [outcome[u.key] for u in item.units if outcome[u.key] is not None]
            tries = max(attempts[u.key] for u in item.units)
            if errors:
                results.append(item.result("dead_letter", tries, "; ".join(map(str, errors))))
            else:
                results.append(item.result("delivered", tries))
        return results

    def _send_units(self, units: Sequence[Unit]) -> tuple[dict[str, str | None], dict[str, int]]:
        """Per unit key: None if applied, else the error; and the attempts each unit took."""
        outcome: dict[str, str | None] = {}
        attempts = {u.key: 0 for u in units}
        item_errors: dict[str, str] = {}
        pending = list(units)
        try:
            for attempt in self.retry.retrying():
                with attempt:
                    item_errors.clear()
                    for unit in pending:
                        attempts[unit.key] += 1
                    pending = self._post(pending, outcome, item_errors)
                    if pending:
                        first = item_errors[pending[0].key]
                        raise RetryableDeliveryError(f"{len(pending)} item(s) failed, e.g. {first}")
        except DeliveryError as exc:
            for unit in pending:
                outcome[unit.key] = item_errors.get(unit.key) or str(exc)
        return outcome, attempts

    def _post(
        self, units: list[Unit], outcome: dict[str, str | None], item_errors: dict[str, str]
    ) -> list[Unit]:
        """One batch request; records settled units in `outcome`, returns those to retry."""
        url = self._url(self.batch_path)
        body = {self.batch_field: [self._wire(unit) for unit in units]}
        headers = {"Idempotency-Key": batch_idempotency_key([u.key for u in units])}
        response = send(
            lambda: self.session.post(url, json=body, headers=headers, timeout=self.timeout)
        )
        raise_for_delivery(response)
        answers = batch_answers(response, units)
        retry = []
        for unit, answer in zip(units, answers, strict=True):
            if self._item_ok(unit, answer):
                outcome[unit.key] = None
                continue
            code = answer.get("code")
            status = code if isinstance(code, int) else 0
            message = f"item HTTP {status} {answer.get('error')}: {answer.get('detail', '')}"
            if is_retryable(status, answer.get("error")):
                item_errors[unit.key] = message
                retry.append(unit)
            else:
                outcome[unit.key] = message
        return retry

    def _wire(self, unit: Unit) -> dict[str, Any]:
        """The unit as a batch item on the wire."""
        return unit.body

    def _item_ok(self, unit: Unit, answer: dict[str, Any]) -> bool:
        """Whether the item's answer means it is applied."""
        return answer.get("status") == "ok"


def batch_answers(response: requests.Response, units: Sequence[Unit]) -> list[dict[str, Any]]:
    """The per-unit answers, checked to line up with what was sent."""
    try:
        answers = response.json()["results"]
    except (ValueError, KeyError, TypeError):
        raise PermanentDeliveryError(f"malformed batch answer: {response.text[:200]}") from None
    if not isinstance(answers, list) or len(answers) != len(units):
        raise PermanentDeliveryError(
            f"batch answer has {len(answers) if isinstance(answers, list) else '?'} results "
            f"for {len(units)} items"
        )
    for unit, answer in zip(units, answers, strict=True):
        if not isinstance(answer, dict) or answer.get("idempotency_key") not in (None, unit.key):
            raise PermanentDeliveryError(f"batch answer out of order at item {unit.key}")
    return answers
