"""Records systems (ERP, CRM): one record per subscription id, and a feed of their users' edits.

Writes received through the sync API are ours and never appear in the feed, so the sync does not
echo its own writes; `edit`/`delete` stand for the system's own users and do.
"""

from __future__ import annotations

import copy
from typing import Any

from subscription_export.sandbox.base import SandboxSystem
from subscription_export.sandbox.messages import ApiError, Request, Response, iso_z, json_safe

MAX_FEED_PAGE = 1000


class RecordSystem(SandboxSystem):
    """A system holding one record per subscription id, with a feed of its users' edits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        self._deleted: dict[str, int] = {}  # id -> version of the deleted record
        self._remote_versions: dict[str, int] = {}
        self._feed: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._records)

    @property
    def deleted_ids(self) -> set[str]:
        with self._lock:
            return set(self._deleted)

    @property
    def remote_versions(self) -> dict[str, int]:
        with self._lock:
            return dict(self._remote_versions)

    @property
    def feed(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._feed)

    def _system_state(self) -> dict[str, Any]:
        return {
            "records": self._records,
            "deleted": sorted(self._deleted),
            "remote_versions": self._remote_versions,
            "feed_length": len(self._feed),
        }

    # -- sync-side writes (ours: never in the feed) ------------------------------------------

    def _check_version(self, ident: str, version: int) -> None:
        """Refuse writes older than what the system holds (or held before a delete)."""
        stored = self._records.get(ident)
        floor = stored.get("version") if stored is not None else self._deleted.get(ident)
        if isinstance(floor, int) and version < floor:
            raise ApiError(
                409, "stale_version", f"{ident}: version {version} < stored version {floor}"
            )

    def _store(self, ident: str, record: dict[str, Any]) -> None:
        self._records[ident] = record
        self._deleted.pop(ident, None)

    def _remove(self, ident: str) -> dict[str, Any]:
        record = self._records.pop(ident)
        version = record.get("version")
        self._deleted[ident] = version if isinstance(version, int) else 0
        return record

    def _bump(self, ident: str) -> int:
        self._remote_versions[ident] = self._remote_versions.get(ident, 0) + 1
        return self._remote_versions[ident]

    # -- the system's own users --------------------------------------------------------------

    def edit(self, ident: str, **fields: Any) -> dict[str, Any]:
        """A user of this system changes a record: bumps remote_version, lands in the feed."""
        with self._lock:
            if ident not in self._records:
                raise KeyError(f"{self.name} has no record {ident!r}")
            now = iso_z(self._clock())
            record = self._records[ident]
            record.update(json_safe(fields))
            record["updated_at"] = now
            return self._publish(ident, "upsert", record, now)

    def delete(self, ident: str) -> dict[str, Any]:
        """A user of this system deletes a record; the feed carries its last state."""
        with self._lock:
            if ident not in self._records:
                raise KeyError(f"{self.name} has no record {ident!r}")
            record = self._remove(ident)
            return self._publish(ident, "delete", record, iso_z(self._clock()))

    def _publish(self, ident: str, op: str, record: dict[str, Any], now: str) -> dict[str, Any]:
        change = {
            "cursor": len(self._feed) + 1,
            "id": ident,
            "op": op,
            "record": copy.deepcopy(record),
            "remote_version": self._bump(ident),
            "updated_at": now,
        }
        self._feed.append(change)
        return copy.deepcopy(change)

    def changes(self, after: int = 0, limit: int = 100) -> dict[str, Any]:
        """Feed page: changes with cursor > after, oldest first, and the cursor to resume at."""
        if after < 0 or not 1 <= limit <= MAX_FEED_PAGE:
            raise ApiError(400, "invalid_page", f"after >= 0 and 1 <= limit <= {MAX_FEED_PAGE}")
        with self._lock:
            page = copy.deepcopy(self._feed[after : after + limit])
        return {"changes": page, "next_cursor": page[-1]["cursor"] if page else after}

    def _changes_route(
        self, request: Request, params: dict[str, str], body: Any, key: str | None
    ) -> Response:
        try:
            after = int(request.query.get("after", "0"))
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise ApiError(400, "invalid_page", "after and limit must be integers") from None
        return Response.json(200, self.changes(after, limit))

    def _extra_admin(self, request: Request, body: Any) -> Response:
        if (request.method, request.path) != ("POST", "/_sandbox/edit"):
            return super()._extra_admin(request, body)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise ApiError(400, "invalid_edit", 'expected {"id": ..., "fields": {...}}')
        try:
            if body.get("delete"):
                return Response.json(200, self.delete(body["id"]))
            fields = body.get("fields")
            if not isinstance(fields, dict) or not fields:
                raise ApiError(400, "invalid_edit", "fields must be a non-empty object")
            return Response.json(200, self.edit(body["id"], **fields))
        except KeyError as exc:
            raise ApiError(404, "not_found", str(exc)) from None
