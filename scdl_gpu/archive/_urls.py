"""Archive locations given as URLs (``s3://``, ``gs://``, ``http(s)://``, ``file://``, any fsspec
protocol), and the one place their secrets are taken out of text.

A URL can carry credentials: ``user:password@`` before the host, or a signed query string
(``?X-Amz-Signature=...``). Every message, log line and error this package writes about a URL
goes through :func:`redact` first, so neither ever reaches a log or a traceback.
"""

from __future__ import annotations

import os
import re

__all__ = ["is_url", "redact", "scrubber"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# scheme://, then an optional userinfo (anything up to an '@' before the first '/'), the rest of the
# URL up to whitespace, quotes or a query/fragment, then the query and fragment.
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s@'\"]*@)?(?P<rest>[^\s?#'\"]*)"
                  r"(?P<query>\?[^\s#'\"]*)?(?P<frag>#[^\s'\"]*)?")


def is_url(location) -> bool:
    """True for a ``scheme://...`` string (a local path never is: it opens as a directory)."""
    return isinstance(location, str) and bool(_SCHEME.match(location)) and not os.path.isabs(location)


def redact(text: str) -> str:
    """``text`` with every URL's ``user:password@`` and query string replaced by ``***``.

    ``s3://key:secret@bucket/a.scdl`` becomes ``s3://***@bucket/a.scdl`` and
    ``https://host/a.scdl?X-Amz-Signature=abc`` becomes ``https://host/a.scdl?***``.
    """

    def clean(m: re.Match) -> str:
        user = "***@" if m["user"] else ""
        query = "?***" if m["query"] else ""
        return f"{m['scheme']}{user}{m['rest']}{query}"

    return _URL.sub(clean, str(text))


def scrubber(url: str):
    """A :func:`redact` that also removes ``url``'s own secrets wherever they appear bare: a library's
    error may quote the URL's parts without its scheme (s3fs takes ``key:secret@bucket`` for a bucket
    name, and botocore quotes it)."""
    m = _URL.match(url) if isinstance(url, str) else None
    secrets = []
    if m and m["user"]:
        user = m["user"][:-1]
        secrets += [user, *user.split(":", 1)]
    if m and m["query"]:
        query = m["query"][1:]
        secrets += [query, *(kv.split("=", 1)[-1] for kv in query.split("&"))]
    secrets = sorted({x for x in secrets if len(x) >= 4}, key=len, reverse=True)  # longest first

    def scrub(text) -> str:
        text = redact(str(text))
        for x in secrets:
            text = text.replace(x, "***")
        return text

    return scrub
