"""Delete cached images on request: ``delete-cached`` and ``delete-all-cached``.

As in prune, a file goes before its row (a failure in between leaves a
phantom row, which reconcile drops, never an orphan file nobody would
prune), and the database is proven writable before the first file goes: a
read-only ``cache.db`` must not cost the operator images whose rows then
cannot be removed.

A file that cannot be removed (EACCES, EPERM on an immutable file) fails its
own id only: the other ids are still tried. A failure of the database or of
the directory stops the run, since every further unlink would leave one
more phantom row; the exception then carries the partial DeleteResult
(``partial_result``), so the caller can still say what was done.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..driver import CacheDriver, DriverError, delete_cached_file, fsync_directory
from .results import LOG, DeleteResult, fail_partway

#: ids per batch: one directory fsync and one short row transaction each
BATCH_SIZE = 500


def delete_cached_images(
    driver: CacheDriver, image_ids: Sequence[str], batch_size: int = BATCH_SIZE
) -> DeleteResult:
    """Delete each id's cached file and row; report every id's fate.

    Raises DatabaseReadOnly before anything is deleted when ``cache.db``
    cannot be written; raises the database's or directory's error part-way,
    with the partial result attached.
    """
    result = DeleteResult()
    ids = list(image_ids)
    tried = 0
    try:
        driver.store.check_writable()
        for start in range(0, len(ids), max(1, batch_size)):
            batch = ids[start : start + max(1, batch_size)]
            tried = start + len(batch)
            _delete_batch(driver, batch, result)
    except (DriverError, OSError) as exc:
        _stop(exc, result, ids[tried:])
        raise
    return result


def delete_all_cached_images(driver: CacheDriver) -> DeleteResult:
    """Every image file and every row, as Glance's ``delete_all_cached_images``.

    Files that are not images (foreign names, lock files, the database) are
    never touched. Rows left without a file afterwards are deleted too; the
    row of a file that could not be removed is kept.
    """
    result = delete_cached_images(driver, sorted(driver.scan_base().images))
    try:
        driver.delete_rows(list(driver.store.iter_row_ids()), only_if_file_missing=True)
    except DriverError as exc:
        _stop(exc, result, [])
        raise
    return result


def delete_queued_images(driver: CacheDriver, image_ids: Sequence[str]) -> DeleteResult:
    """Delete each id's queue entry (no row involved); a failure fails that id only."""
    result = DeleteResult()
    for image_id in image_ids:
        present = driver.is_queued(image_id)
        try:
            driver.delete_queued_image(image_id)
        except OSError as exc:
            LOG.warning("failed to delete queue entry", image_id=image_id, error=str(exc))
            result.failed[image_id] = exc.strerror or str(exc)
            continue
        (result.deleted if present else result.not_found).append(image_id)
    return result


def _delete_batch(driver: CacheDriver, batch: list[str], result: DeleteResult) -> None:
    """Unlink the batch's files, then delete the rows of those that went."""
    removed: dict[str, bool] = {}  # id -> whether it had a cached file
    for image_id in batch:
        present = driver.is_cached(image_id)
        path = driver.get_image_filepath(image_id)
        try:
            delete_cached_file(path)
        except OSError as exc:
            LOG.warning(
                "failed to delete file; trying the other images", path=path, error=str(exc)
            )
            result.failed[image_id] = exc.strerror or str(exc)
            continue
        removed[image_id] = present
    if not removed:
        return
    try:
        fsync_directory(driver.base_dir)
        # a file re-cached since our unlink keeps its row (else: an orphan)
        driver.delete_rows(list(removed), only_if_file_missing=True)
    except (DriverError, OSError) as exc:
        for image_id, present in removed.items():
            file = "file deleted" if present else "no file"
            result.failed[image_id] = f"{file}, row not deleted: {exc}"
        raise
    for image_id, present in removed.items():
        (result.deleted if present else result.not_found).append(image_id)


def _stop(exc: BaseException, result: DeleteResult, not_attempted: list[str]) -> None:
    """Record why the run stopped and what it never tried; attach the result."""
    result.error = str(exc)
    result.not_attempted = not_attempted
    fail_partway(exc, result)
