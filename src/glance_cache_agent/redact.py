"""Masking database passwords wherever a URL may be shown: config output, errors, logs, metrics.

``cache.database`` (Glance's ``[database] connection``) carries the password
of Glance's database. DESIGN section 4 says it never appears in logs,
``check-config`` output or metrics, so every place that shows a URL or a
message that may quote one passes it through here first. The password is
replaced by ``***``, as SQLAlchemy's ``URL.render_as_string(hide_password=True)``
does; a password given as a query parameter (``?password=...``, which the
database drivers accept) is masked too.

Masking errs on the side of hiding: everything between the first ``:`` of
the user info and its last ``@`` is the password, so a password holding an
unescaped ``@`` or ``/`` is hidden whole. A leaf module (standard library only),
so the sqlite path never imports SQLAlchemy for it.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_text", "mask_url", "url_scheme"]

MASK = "***"

#: ``password=...`` (and its common spellings) in a URL's query string
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd|pwd)=)[^&\s\"']*", re.IGNORECASE)
#: user info with a password inside free text: ``scheme://user:password@``
_TEXT_CREDENTIALS = re.compile(r"([A-Za-z][\w+.-]*://[^:/@\s\"']*):[^\s\"']*@")
_SCHEME = re.compile(r"([A-Za-z][\w+.-]*)://")


def url_scheme(url: str) -> str | None:
    """The scheme of ``url`` as written (``mysql+pymysql``), or None when it has none."""
    match = _SCHEME.match(url)
    return None if match is None else match[1]


def mask_url(url: str) -> str:
    """``url`` with its password (user info or query parameter) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if sep:
        before_query, qmark, query = rest.partition("?")
        userinfo, at, host = before_query.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if at and colon:
            rest = f"{user}:{MASK}@{host}{qmark}{query}"
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", f"{scheme}{sep}{rest}")


def mask_text(text: str) -> str:
    """``text`` (an error message, a log line) with the password of every URL in it masked."""
    masked = _TEXT_CREDENTIALS.sub(rf"\g<1>:{MASK}@", text)
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", masked)
