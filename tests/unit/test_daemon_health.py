"""/healthz bookkeeping: which finished runs count as failed."""

from __future__ import annotations

from glance_cache_agent.maintenance import CleanResult
from glance_cache_agent.service.daemon import Health, run_problem
from glance_cache_agent.service.runner import TaskOutcome


def _outcome(errors: list[str]) -> TaskOutcome:
    return TaskOutcome("clean", "scheduled", 0.1, CleanResult(dry_run=False, errors=errors))


def test_a_clean_run_is_healthy_and_a_run_with_file_errors_is_not() -> None:
    health = Health()
    health.scheduler_alive = True
    health.record("clean", _outcome([]))
    assert health.report()[0] is True

    health.record("clean", _outcome(["/c/invalid/x: Permission denied"]))
    ok, body = health.report()
    assert ok is False and body["failing_tasks"] == ["clean"]
    assert "Permission denied" in body["reasons"][0]

    health.record("clean", _outcome([]))  # the next good run clears it
    assert health.report()[0] is True


def test_run_problem_names_the_exception() -> None:
    assert run_problem(OSError(5, "Input/output error")) == "OSError: [Errno 5] Input/output error"
    assert run_problem(_outcome([])) is None
