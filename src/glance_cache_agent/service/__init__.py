"""The long-running side of the agent: daemon, scheduler, task runner, locks.

``service`` owns everything that keeps the agent alive between commands:
the daemon loop and its health, the APScheduler wiring and cron translation,
sd_notify, the maintenance lock, the run journal, the clock watch and the
logging set-up. It depends on ``maintenance`` and ``driver``, never on ``cli``.
"""
