"""Image-id validation: the only gate between user input and a filesystem path.

Glance names cache files exactly after the image id, so an id is a path
component. Glance's driver accepts any ``str()``-able id, but Glance only ever
issues UUIDs, so only a UUID (8-4-4-4-12 hex digits, dashes required, either
hex case; Glance writes lowercase) is an image id here. Everything else is
refused *before* a path is built, with a reason that names the offending part;
in the cache directory such a name is foreign and never touched (an
operator's ``backup`` or ``README``, a lock file, a state directory).
"""

from __future__ import annotations

import re

from .errors import InvalidImageId

#: Longest id we accept: NAME_MAX on Linux filesystems.
MAX_ID_LENGTH = 255

_ALLOWED = re.compile(r"[A-Za-z0-9_-]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def image_id_problem(image_id: object, reserved: frozenset[str] = frozenset()) -> str | None:
    """Return why ``image_id`` is not acceptable, or None when it is.

    ``reserved`` holds names the cache itself uses in its base directory
    (the database, its side files, lock files): they are never image ids.
    """
    if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
        return f"must be a string, not {type(image_id).__name__}"
    text = str(image_id)
    if not text:
        return "is empty"
    if "\x00" in text:
        return "contains a NUL byte"
    if "/" in text or "\\" in text:
        return "contains a path separator"
    if ".." in text:
        return "contains '..'"
    if text.startswith("."):
        return "starts with a dot"
    if len(text) > MAX_ID_LENGTH:
        return f"is {len(text)} characters long; the limit is {MAX_ID_LENGTH}"
    if not _ALLOWED.fullmatch(text):
        bad = next(ch for ch in text if not _ALLOWED.fullmatch(ch))
        return f"contains {bad!r}; image ids use only letters, digits, '-' and '_'"
    if not text[0].isalnum():
        return "must start with a letter or digit"
    if text in reserved:
        return "is reserved by the cache (its database or a lock file)"
    if not is_uuid(text):
        return "is not a UUID (Glance issues only UUIDs: 8-4-4-4-12 hex digits)"
    return None


def is_uuid(name: str) -> bool:
    """True for a UUID spelled 8-4-4-4-12 hex digits with dashes, in either case.

    Agrees with ``image_id_problem(name) is None`` for every string: this is
    the whole rule in one regex, for hot paths (directory scans).
    """
    return _UUID.fullmatch(name) is not None


def validate_image_id(image_id: object, reserved: frozenset[str] = frozenset()) -> str:
    """Return ``image_id`` as the string used on disk, or raise InvalidImageId."""
    problem = image_id_problem(image_id, reserved)
    if problem is not None:
        raise InvalidImageId(image_id, problem)
    return str(image_id)
