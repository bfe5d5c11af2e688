"""Eviction churn: ``glance_cache_reevicted_images_total`` (issue 12, part 4).

An image prune evicts, that is cached again and evicted again within a day,
counts as a re-eviction; the ``GlanceCacheEvictionChurn`` alert is built on
it. Real prunes on a real cache feed the agent's instrumentation; the clock
is moved with freezegun, never slept.
"""

from __future__ import annotations

from datetime import UTC, datetime

from freezegun import freeze_time
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from glance_cache_agent.config import TASK_NAMES
from glance_cache_agent.driver import Driver
from glance_cache_agent.exporter.evictions import EvictionMemory
from glance_cache_agent.exporter.metrics import AgentMetrics
from glance_cache_agent.maintenance import PrunePolicy, PruneResult, run_prune
from tests.helpers.cache import cache_image, set_row, uid

T0 = 1_700_000_000.0
DAY = 86400.0
OLD, NEW = uid("old"), uid("new")


def reevicted(registry: CollectorRegistry) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == "glance_cache_reevicted_images_total":
                return float(sample.value)
    raise AssertionError("glance_cache_reevicted_images_total is not exported")


def prune_the_old_image(driver: Driver) -> PruneResult:
    """(Re-)cache OLD as the least recently used image and prune it out for real."""
    cache_image(driver, OLD, 1000)
    set_row(driver, OLD, last_accessed=1.0)
    result = run_prune(
        driver, PrunePolicy(max_size=driver.get_cache_size() - 1, batch_pause=0), lock_timeout=5
    )
    assert result.images == [OLD]
    return result


def observe_at(agent: AgentMetrics, when: float, result: PruneResult) -> None:
    with freeze_time(datetime.fromtimestamp(when, tz=UTC)):
        agent.observe_task("prune", "scheduled", 0.1, result)


def test_an_image_evicted_again_within_a_day_counts_as_churn(driver: Driver) -> None:
    agent = AgentMetrics(TASK_NAMES)
    registry = CollectorRegistry()
    registry.register(agent)
    cache_image(driver, NEW, 1000)
    assert reevicted(registry) == 0  # exported from start-up

    observe_at(agent, T0, prune_the_old_image(driver))
    assert reevicted(registry) == 0  # a first eviction is turnover, not churn

    observe_at(agent, T0 + 3600, prune_the_old_image(driver))
    assert reevicted(registry) == 1  # cached again and evicted again an hour later

    dry = PruneResult(True, pruned_images=1, images=[OLD])
    observe_at(agent, T0 + 3700, dry)
    assert reevicted(registry) == 1  # a dry run evicts nothing

    observe_at(agent, T0 + 3600 + DAY + 1, prune_the_old_image(driver))
    assert reevicted(registry) == 1  # more than a day after its last eviction: forgotten


def test_the_memory_is_bounded_and_forgets_the_oldest_first() -> None:
    memory = EvictionMemory(window=DAY, capacity=3)
    ids = [uid(n) for n in range(5)]
    assert memory.evicted(ids[:4], T0) == 0
    assert len(memory) == 3  # ids[0] dropped out
    assert memory.evicted([ids[0], ids[3]], T0 + 1) == 1
    assert memory.evicted([ids[2]], T0 + DAY - 1) == 1  # evicted at T0: within a day
    assert memory.evicted([ids[1]], T0 + DAY - 1) == 0  # pushed out by ids[0]
    assert memory.evicted([ids[3]], T0 + DAY + 2) == 0  # last evicted at T0 + 1: too long ago
