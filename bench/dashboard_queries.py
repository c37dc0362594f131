"""Dashboard response time with 100,000 builds in PostgreSQL (run by bench_browser.py
with DATABASE_URL set to the bench database)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "goci.settings")

BUILDS = 100_000


def main() -> None:
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, check=True)
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from builds import services
    from builds.models import Build, Project

    Project.objects.filter(slug__startswith="dash").delete()
    user, _ = User.objects.get_or_create(username="dash-bench")
    projects = [services.project_create(user=user, slug=f"dash{i}") for i in range(5)]
    began = time.monotonic()
    statuses = ["success", "failure", "success", "running", "queued", "canceled"]
    Build.objects.bulk_create(
        (
            Build(
                project=projects[i % 5],
                number=i + 1,
                status=statuses[i % len(statuses)],
                ref=f"refs/heads/{'main' if i % 3 else 'feature'}",
                commit=f"{i:040x}",
                pipeline="steps: [{run: 'true'}]",
                author=user,
            )
            for i in range(BUILDS)
        ),
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"dashboard: {BUILDS:,} builds inserted in {time.monotonic() - began:.1f} s")
    client = Client(HTTP_HOST="localhost")  # an allowed host
    client.force_login(user)
    for path in ("/", "/?status=failure", "/?branch=main&page=3"):
        client.get(path)  # warm
        times = []
        for _ in range(50):
            start = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200
        with CaptureQueriesContext(connection) as queries:
            client.get(path)
        times.sort()
        print(
            f"dashboard {path:<22} p50 {statistics.median(times):6.1f} ms  p95 "
            f"{times[47]:6.1f} ms  {len(queries)} queries   target p95 <= 100 ms"
        )
    Project.objects.filter(slug__startswith="dash").delete()


if __name__ == "__main__":
    main()
