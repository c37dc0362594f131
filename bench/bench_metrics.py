"""`make bench` for /metrics (issue #13): the time of one scrape on PostgreSQL with
100,000 builds (one job and 3 steps each) and 1,000,000 log chunks, median of 5 after
a warm-up, and each query's share of it.

Uses the database goci_bench_metrics on BENCH_DATABASE_URL's server (default
postgres://postgres@127.0.0.1:5432/...), created here and filled once with SQL
(generate_series); a second run reuses the rows.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/goci_bench")
URL = SERVER.rsplit("/", 1)[0] + "/goci_bench_metrics"
os.environ["DATABASE_URL"] = URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "goci.settings")
os.environ.pop("REDIS_URL", None)
os.environ["GOCI_DATA_DIR"] = tempfile.mkdtemp(prefix="goci-bench-metrics-")
sys.path.insert(0, str(REPO))

BUILDS = 100_000
CHUNKS = 1_000_000
TOKEN = "bench-metrics"  # noqa: S105  (this benchmark's own server)

FILL = f"""
INSERT INTO builds_project (slug, name, repo_url, default_branch, pipeline_path,
    webhook_secret, auto_cancel, public, badge_token, next_build_number, created_at)
VALUES ('bench', 'bench', '', 'main', '.goci.yml', '', true, false, '', {BUILDS + 1}, now());

INSERT INTO builds_build (project_id, number, status, trigger, ref, commit, message,
    pipeline, env, cancel_requested, fork, forge, commit_author, compare_url, pr_title,
    source_branch, target_branch, base_commit, checkout, created_at, started_at, finished_at)
SELECT (SELECT id FROM builds_project WHERE slug = 'bench'), n,
    (ARRAY['success', 'success', 'success', 'failure', 'error', 'canceled', 'queued',
        'running'])[1 + n % 8],
    'api', 'main', md5(n::text), '', 'steps: []', '{{}}', false, false, '', '', '', '',
    '', '', '', false, now() - make_interval(secs => n * 60), NULL, NULL
FROM generate_series(1, {BUILDS}) AS n;

INSERT INTO builds_job (build_id, name, status, attempt, worker, labels, error,
    created_at, started_at, finished_at)
SELECT id, 'default', status, 1, '',
    (ARRAY['[]', '["linux"]', '["gpu", "linux"]'])[1 + id % 3]::jsonb, '',
    created_at,
    CASE WHEN status <> 'queued' THEN created_at + make_interval(secs => (id % 97) / 10.0) END,
    NULL
FROM builds_build;

INSERT INTO builds_step (job_id, name, position, needs, image, status, error,
    started_at, finished_at)
SELECT j.id, 's' || p, p, '[]', '', j.status, '',
    j.started_at, j.started_at + make_interval(secs => (j.id * (p + 1)) % 4000 / 3.0)
FROM builds_job j, generate_series(0, 2) AS p
WHERE j.status NOT IN ('queued');

INSERT INTO builds_logchunk (step_id, attempt, first_line, line_count, text, created_at)
SELECT s.id, 1, 1 + k * 100, 100, repeat(md5(s.id::text || k::text), 8), now()
FROM (SELECT id, row_number() OVER (ORDER BY id) AS r FROM builds_step) s,
    generate_series(0, 3) AS k
WHERE (s.r - 1) * 4 + k < {CHUNKS};

ANALYZE;
"""  # noqa: S608  (only this file's own numbers go in)


def prepare_database() -> None:
    import psycopg

    try:
        with psycopg.connect(SERVER.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = 'goci_bench_metrics'"
            ).fetchone():
                conn.execute('CREATE DATABASE "goci_bench_metrics"')
    except psycopg.OperationalError as exc:
        raise SystemExit(f"metrics bench skipped: PostgreSQL is not reachable ({exc})") from None
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, check=True, env=os.environ
    )


def main() -> None:
    prepare_database()
    import django

    django.setup()
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    from builds.models import Build, LogChunk

    if Build.objects.count() != BUILDS or LogChunk.objects.count() != CHUNKS:
        began = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(
                "TRUNCATE builds_project, builds_build, builds_job, builds_step, "
                "builds_logchunk CASCADE"
            )
            cursor.execute(FILL)
        print(f"metrics: filled in {time.perf_counter() - began:.0f} s")
    assert Build.objects.count() == BUILDS
    assert LogChunk.objects.count() == CHUNKS

    client = Client()
    with override_settings(GOCI_METRICS_TOKEN=TOKEN, ALLOWED_HOSTS=["testserver"]):
        client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")  # warm-up
        times = []
        for _ in range(5):
            began = time.perf_counter()
            with CaptureQueriesContext(connection) as queries:
                response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
            times.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200
    print(
        f"metrics: one scrape of {BUILDS:,} builds / {CHUNKS:,} log chunks on PostgreSQL: "
        f"{statistics.median(times):.0f} ms median of 5 ({len(queries)} queries)"
    )
    for query in sorted(queries, key=lambda q: -float(q["time"])):
        print(f"  {float(query['time']) * 1000:7.1f} ms  {query['sql'][:110]}")


if __name__ == "__main__":
    main()
