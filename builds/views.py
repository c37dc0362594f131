"""The dashboard: server-rendered pages, with htmx for the parts that change.

Views are thin: look the object up through builds.access (None is a 404, whether the
object is missing or another user's), parse, make one service call, render or
redirect. One URL serves a page or, to an htmx request, its fragment (a partial of
the same template), so a polled table and its page cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import F, Max, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from builds import access, services
from builds.forms import BuildFilterForm, RunPipelineForm
from builds.logs import iter_step_lines, log_pieces, stream_text
from builds.models import Build, LogChunk, Project, Status, Step
from builds.pipeline import PipelineError

PAGE_SIZE = 50
ACTIVE = (Status.QUEUED, Status.RUNNING)

# The pipeline picture: boxes in columns by dependency depth (pixels).
BOX_WIDTH = 176
BOX_HEIGHT = 56
COLUMN_GAP = 56
ROW_GAP = 16
MARGIN = 8


def _htmx(request: HttpRequest) -> bool:
    """Whether to answer with a fragment. A history restore asks for the whole page
    (htmx found no snapshot to put back), though it is an htmx request."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.history_restore_request  # type: ignore[union-attr]


def _page_or_fragment(
    request: HttpRequest, template: str, fragment: str, context: dict[str, Any]
) -> HttpResponse:
    response = render(request, f"{template}#{fragment}" if _htmx(request) else template, context)
    # Page and fragment share a URL: a cache must keep them apart.
    patch_vary_headers(response, ("HX-Request",))
    return response


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = int(seconds)
    if whole < 1:
        return "<1s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _elapsed(started: datetime | None, finished: datetime | None, now: datetime) -> str:
    """How long it took, or has taken so far while it runs."""
    if started is None:
        return ""
    return format_duration(((finished or now) - started).total_seconds())


def _with_durations(builds: Any) -> None:
    now = timezone.now()
    for build in builds:
        build.elapsed = _elapsed(build.started_at, build.finished_at, now)


@dataclass
class _Page:
    """A page of builds without a total: COUNT(*) over every visible build is what
    made the dashboard slow at 100,000 builds, and "Older →" needs only one row more."""

    number: int
    object_list: list[Build]
    has_next: bool

    @classmethod
    def of(cls, builds: QuerySet[Build], requested: str | None) -> _Page:
        number = int(requested) if requested and requested.isdigit() and int(requested) else 1
        start = (number - 1) * PAGE_SIZE
        rows = list(builds[start : start + PAGE_SIZE + 1])
        return cls(number, rows[:PAGE_SIZE], len(rows) > PAGE_SIZE)

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1


def _build_page(request: HttpRequest, builds: QuerySet[Build], path: str) -> dict[str, Any]:
    """One page of a build list, whether the table should poll for changes, and the
    page's URL (`path`: the list's page, also when a POST rendered it) to poll and page."""
    builds = builds.select_related("project", "author").order_by("-id")
    page = _Page.of(builds, request.GET.get("page"))
    _with_durations(page.object_list)
    query = request.GET.urlencode()
    return {
        "page": page,
        "builds": page.object_list,
        # Polling stops with the last running build: the fragment without it has no trigger.
        "live": any(build.status in ACTIVE for build in page.object_list),
        "list_path": path,
        "list_url": f"{path}?{query}" if query else path,
    }


# ---------------------------------------------------------------------------
# Pages


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """Recent builds of the user's projects, filtered by project, status and branch."""
    form = BuildFilterForm(request.GET or None, projects=access.projects_for_user(request.user))
    builds = access.builds_for_user(request.user)
    if form.is_bound:
        builds = form.filter(builds)
    context = {
        "filters": form,
        "filtered": any(request.GET.get(name) for name in form.fields),
        **_build_page(request, builds, reverse("builds:dashboard")),
    }
    return _page_or_fragment(request, "builds/dashboard.html", "build-table", context)


@login_required
@require_GET
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project_or_404(request, slug)
    form = RunPipelineForm(initial={"ref": project.default_branch})
    return _project_page(request, project, form)


@login_required
@require_POST
def project_run(request: HttpRequest, slug: str) -> HttpResponse:
    """Queue a build of a pasted or uploaded pipeline; on a problem, the form again with
    every problem beside the text (which is kept)."""
    project = _project_or_404(request, slug)
    form = RunPipelineForm(request.POST, request.FILES)
    if form.is_valid():
        data = form.cleaned_data
        try:
            build, _ = services.build_create(
                project=project,
                pipeline=data["pipeline"],
                author=request.user,  # type: ignore[arg-type]  # login_required
                ref=data["ref"],
                commit=data["commit"],
                trigger=Build.Trigger.MANUAL,
            )
        except PipelineError as exc:
            form.add_pipeline_problems(exc)
        except services.InvalidRequest as exc:
            form.add_error(None, str(exc))
        else:
            return _redirect(request, reverse("builds:build", args=[build.pk]))
    if _htmx(request):
        return render(
            request, "builds/project_detail.html#run-form", _project_context(project, form)
        )
    return _project_page(request, project, form)


def _project_or_404(request: HttpRequest, slug: str) -> Project:
    project = access.find_project_for_user(request.user, slug)
    if project is None:
        raise Http404("no such project")
    return project


def _project_context(project: Project, form: RunPipelineForm) -> dict[str, Any]:
    return {"project": project, "form": form}


def _project_page(request: HttpRequest, project: Project, form: RunPipelineForm) -> HttpResponse:
    builds = access.builds_for_user(request.user).filter(project=project)
    path = reverse("builds:project", args=[project.slug])
    context = {**_project_context(project, form), **_build_page(request, builds, path)}
    return _page_or_fragment(request, "builds/project_detail.html", "build-table", context)


@login_required
@require_GET
def build_detail(request: HttpRequest, build_id: int) -> HttpResponse:
    """A build: its header, the picture of its pipeline, and a log section per step
    (the lines themselves are fetched and followed by static/logview.js)."""
    build = _build_or_404(request, build_id)
    if _htmx(request):
        # The header polls itself while the build runs (its buttons change with it).
        return _header(request, build)
    steps = list(
        Step.objects.filter(job__build=build).select_related("job").order_by("job_id", "position")
    )
    _with_step_details(steps)
    context = {**_header_context(build), "steps": steps, "graph": _graph(steps)}
    response = render(request, "builds/build_detail.html", context)
    patch_vary_headers(response, ("HX-Request",))
    return response


@login_required
@require_POST
def build_cancel(request: HttpRequest, build_id: int) -> HttpResponse:
    build = services.build_cancel(build=_build_or_404(request, build_id))
    if _htmx(request):
        return _header(request, build)
    return redirect("builds:build", build_id=build.pk)


@login_required
@require_POST
def build_rerun(request: HttpRequest, build_id: int) -> HttpResponse:
    build = _build_or_404(request, build_id)
    try:
        rerun = services.build_rerun(build=build, author=request.user)  # type: ignore[arg-type]
    except (PipelineError, services.InvalidRequest) as exc:
        # Only a snapshot that a newer Goci no longer accepts gets here.
        messages.error(request, f"This build cannot be run again: {exc}")
        if _htmx(request):
            return _header(request, build)
        return redirect("builds:build", build_id=build.pk)
    return _redirect(request, reverse("builds:build", args=[rerun.pk]))


@login_required
@require_GET
def step_raw(request: HttpRequest, build_id: int, position: int) -> StreamingHttpResponse:
    """One step's log of the current attempt, as a text file."""
    build = _build_or_404(request, build_id)
    step = (
        Step.objects.filter(job__build=build, position=position)
        .select_related("job")
        .order_by("job_id")
        .first()
    )
    if step is None:
        raise Http404("no such step")
    lines = (f"{text}\n" for _, text, _ in iter_step_lines(step, step.job.attempt))
    filename = f"{build.project.slug}-{build.number}-{step.name}.log"
    return _attachment(stream_text(request, lines), filename)


@login_required
@require_GET
def build_raw(request: HttpRequest, build_id: int) -> StreamingHttpResponse:
    """The whole log: every step under a `==> name (status)` header."""
    build = _build_or_404(request, build_id)
    # The API's reader: the same text as GET /api/builds/<id>/logs, streamed under ASGI.
    pieces = log_pieces(build.pk, step=None, after=0, follow=False)
    return _attachment(stream_text(request, pieces), f"{build.project.slug}-{build.number}.log")


# ---------------------------------------------------------------------------
# Helpers


def _build_or_404(request: HttpRequest, build_id: int) -> Build:
    build = access.find_build_for_user(request.user, build_id)
    if build is None:
        raise Http404("no such build")
    return build


def _redirect(request: HttpRequest, url: str) -> HttpResponse:
    # htmx would follow a 302 itself and swap the whole next page into the target.
    if _htmx(request):
        return HttpResponseClientRedirect(url)
    return redirect(url)


def _attachment(response: StreamingHttpResponse, filename: str) -> StreamingHttpResponse:
    # Step names may hold any character; keep the header plain ASCII and unquotable.
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in filename)
    response["Content-Disposition"] = f'attachment; filename="{safe}"'
    return response


def _header_context(build: Build) -> dict[str, Any]:
    build.elapsed = _elapsed(build.started_at, build.finished_at, timezone.now())  # type: ignore[attr-defined]
    return {
        "build": build,
        "can_cancel": build.status in ACTIVE and not build.cancel_requested,
        "can_rerun": build.finished,
    }


def _header(request: HttpRequest, build: Build) -> HttpResponse:
    return render(request, "builds/build_detail.html#build-header", _header_context(build))


def _with_step_details(steps: list[Step]) -> None:
    """Each step's duration and the number of its last stored line of the current
    attempt (logview.js starts from it), in one query for all steps."""
    now = timezone.now()
    last_lines = dict(
        LogChunk.objects.filter(
            step__in=[step.pk for step in steps], attempt=F("step__job__attempt")
        )
        .values("step_id")
        .annotate(last=Max(F("first_line") + F("line_count") - 1))
        .values_list("step_id", "last")
    )
    for step in steps:
        step.elapsed = _elapsed(step.started_at, step.finished_at, now)  # type: ignore[attr-defined]
        step.line_count = last_lines.get(step.pk, 0)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Node:
    step: Step
    x: int
    y: int


@dataclass(frozen=True)
class _Graph:
    nodes: list[_Node]
    edges: list[str]  # SVG path data, one per `needs` arrow
    width: int
    height: int
    box_width: int = BOX_WIDTH
    box_height: int = BOX_HEIGHT


def _graph(steps: list[Step]) -> _Graph:
    """Lay the steps out in columns by dependency depth (a step with no needs is in
    column 0, any other one column right of its deepest need), in position order within
    a column, with an arrow from each need to the step that waits for it."""
    by_name = {(step.job_id, step.name): step for step in steps}
    depth: dict[int, int] = {}

    def depth_of(step: Step, seen: frozenset[int] = frozenset()) -> int:
        if step.pk not in depth:
            needs = [by_name.get((step.job_id, name)) for name in step.needs]
            # `seen` only guards against a cycle in a damaged row; plan() forbids them.
            known = [need for need in needs if need is not None and need.pk not in seen]
            depth[step.pk] = 1 + max(
                (depth_of(need, seen | {step.pk}) for need in known), default=-1
            )
        return depth[step.pk]

    rows: dict[int, int] = {}
    nodes: dict[int, _Node] = {}
    for step in steps:
        column = depth_of(step)
        row = rows.get(column, 0)
        rows[column] = row + 1
        nodes[step.pk] = _Node(
            step=step,
            x=MARGIN + column * (BOX_WIDTH + COLUMN_GAP),
            y=MARGIN + row * (BOX_HEIGHT + ROW_GAP),
        )
    edges = []
    for step in steps:
        end = nodes[step.pk]
        for name in step.needs:
            need = by_name.get((step.job_id, name))
            if need is None:
                continue
            start = nodes[need.pk]
            x1, y1 = start.x + BOX_WIDTH, start.y + BOX_HEIGHT // 2
            x2, y2 = end.x - 2, end.y + BOX_HEIGHT // 2  # the arrowhead ends at the box
            bend = (x2 - x1) // 2
            edges.append(f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}")
    columns = max(depth.values(), default=0) + 1
    tallest = max(rows.values(), default=1)
    return _Graph(
        nodes=list(nodes.values()),
        edges=edges,
        width=2 * MARGIN + columns * BOX_WIDTH + (columns - 1) * COLUMN_GAP,
        height=2 * MARGIN + tallest * BOX_HEIGHT + (tallest - 1) * ROW_GAP,
    )
