"""The one masker for credentials: every URL or message that may hold a password goes through
here before it is printed, stored or shown.

URLs are taken apart by a parser (`urllib.parse`, SQLAlchemy's `make_url` where only it
understands a password with a raw `/`), never by guessing at the text: the userinfo password of
any scheme (postgresql+psycopg, redis, rediss, redis+sentinel, http(s), ...) and the values of
secret-looking query parameters are replaced by `***`. Free text (error messages) is scanned
for embedded URLs and `password=…`-style pairs, so a library's message that quotes our URL is
masked as well.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, urlsplit

MASK = "***"

# Query parameters and `key=value` pairs whose value is a credential (lower case).
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "sslpassword",
        "token",
        "access_token",
        "auth_token",
        "refresh_token",
        "api_key",
        "apikey",
        "api-key",
        "secret",
        "client_secret",
        "key",
        "signature",
        "sig",
    }
)

# A URL inside free text: scheme, `://`, then anything up to white space or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# `password=…` outside a URL (libpq conninfo strings, logged settings). Short generic names
# (`key`, `sig`, `pass`) are masked in query strings only: in prose they are too common.
_TEXT_KEYS = sorted(SECRET_KEYS - {"key", "sig", "pass"}, key=len, reverse=True)
_PAIR_IN_TEXT = re.compile(
    r"(?P<key>(?<![A-Za-z0-9_])(?:" + "|".join(map(re.escape, _TEXT_KEYS)) + r"))"
    r"(?P<sep>\s*=\s*)(?P<value>[^\s&'\",;)]+)",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """`url` with its password and secret query values replaced by `***`; anything that is not
    a URL is returned as `mask_in_text` would show it."""
    if "://" not in url:
        return _mask_pairs(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a malformed IPv6 host: mask what the text scan finds
        return _mask_pairs(_mask_userinfo_by_sqlalchemy(url))
    if "@" not in parts.netloc and "@" in url:
        # A raw `/` in the password ends urllib's netloc early; SQLAlchemy's parser allows it.
        return _mask_pairs(_mask_userinfo_by_sqlalchemy(url))
    netloc, query = _masked_netloc(parts), _masked_query(parts)
    if (netloc, query) == (parts.netloc, parts.query):
        return _mask_pairs(url)  # nothing in the parts: keep the text exactly as given
    # Rebuilt by hand: urlunsplit drops the empty netloc of `sqlite:///…`-like URLs.
    rebuilt = f"{parts.scheme}://{netloc}{parts.path}"
    rebuilt += f"?{query}" if query else ""
    return rebuilt + (f"#{parts.fragment}" if parts.fragment else "")


def mask_in_text(text: str) -> str:
    """`text` with every embedded URL masked (`mask_url`) and every `password=…` pair too."""
    return _mask_pairs(_URL_IN_TEXT.sub(_masked_match, text))


def _masked_match(match: re.Match[str]) -> str:
    # Punctuation that ends a sentence or a parenthesis is not part of the URL.
    url = match.group().rstrip(").,;:!?]")
    return mask_url(url) + match.group()[len(url) :]


def _masked_netloc(parts: SplitResult) -> str:
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return parts.netloc
    user, colon, password = userinfo.partition(":")
    if colon and password:
        return f"{user}:{MASK}@{host}"
    if not colon and user and not parts.scheme.startswith(("postgres", "mysql", "sqlite")):
        # `https://TOKEN@host`, `redis://TOKEN@host`: a lone userinfo is the credential there.
        return f"{MASK}@{host}"
    return parts.netloc


def _masked_query(parts: SplitResult) -> str:
    if not parts.query:
        return parts.query
    pairs = []
    for pair in parts.query.split("&"):
        key, eq, value = pair.partition("=")
        secret = eq and value and unquote(key).strip().lower() in SECRET_KEYS
        pairs.append(f"{key}={MASK}" if secret else pair)
    return "&".join(pairs)


def _mask_userinfo_by_sqlalchemy(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # Not parseable either: cut everything between `://` and the last `@` of the netloc.
        scheme, _, rest = url.partition("://")
        head, at, tail = rest.rpartition("@")
        return f"{scheme}://{MASK}@{tail}" if at and head else url
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def _mask_pairs(text: str) -> str:
    return _PAIR_IN_TEXT.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
