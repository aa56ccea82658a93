"""The slow test files and how long each took (its tests' seconds summed; one full run of
scripts/test, 4 processes, 562 tests, 2026-12-08). tests/conftest.py runs them first: a file left
out counts as quick. Refresh the figures when a file's weight changes a lot (`--junitxml`, then
sum each file's test times); a stale figure only makes the schedule less tight, never wrong."""

SLOW_FILES: dict[str, int] = {
    "test_faults.py": 310,
    "test_registry.py": 163,
    "test_ingest.py": 162,
    "test_resume.py": 129,
    "test_hot_store.py": 128,
    "test_replay.py": 105,
    "test_spark_interop.py": 87,
    "test_trades.py": 85,
    "test_maintain.py": 75,
    "test_verify.py": 62,
    "test_secure.py": 60,
    "test_cli.py": 55,
    "test_metrics.py": 54,
    "test_fuzz_pipeline.py": 49,
    "test_delta_compaction.py": 46,
    "test_show.py": 37,
    "test_hosts.py": 37,
    "test_status.py": 36,
    "test_supervisor.py": 36,
    "test_least_privilege.py": 26,
    "test_committer.py": 26,
    "test_postgres_sink.py": 24,
    "test_admission.py": 23,
}
