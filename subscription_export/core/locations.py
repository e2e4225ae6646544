"""Export locations as UPaths: a local folder, or an fsspec URL (s3://, gs://, az://).

Credentials never appear here: fsspec's backends read them from the environment
(AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_...), and
anything else comes from SUBSCRIPTION_EXPORT_STORAGE_OPTIONS (a JSON object).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from upath import UPath

LOCAL_PROTOCOLS = frozenset({"", "file", "local"})
# fsspec caches directory listings per filesystem instance, for the life of the process. A
# long-running worker (the daemon, `run --watch`) would then miss objects other workers wrote
# and read a changed object by its stale ETag (s3fs fails it). Exports list little: no cache.
_OBJECT_STORE_DEFAULTS: dict[str, Any] = {"use_listings_cache": False}


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """The JSON object of SUBSCRIPTION_EXPORT_STORAGE_OPTIONS (ValueError if it is not one;
    the message never quotes the text, which may hold a secret)."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError:
        raise ValueError("is not valid JSON") from None
    if not isinstance(options, dict):
        raise ValueError("is not a JSON object")
    return options


def export_location(
    value: str | os.PathLike[str] | UPath, storage_options: Mapping[str, Any] | None = None
) -> UPath:
    """`value` as a UPath; object stores get `storage_options` over our defaults."""
    if isinstance(value, UPath) and not storage_options and not is_local(value):
        return value  # keeps the options it was made with
    text = str(value) if isinstance(value, UPath) else os.fspath(value)
    probe = UPath(text)
    if is_local(probe):
        return probe
    return UPath(text, **{**_OBJECT_STORE_DEFAULTS, **(storage_options or {})})


def is_local(path: object) -> bool:
    return not isinstance(path, UPath) or path.protocol in LOCAL_PROTOCOLS
