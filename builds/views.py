"""The dashboard: server-rendered pages, with htmx for the parts that change.

Views are thin: look the object up through builds.access with the role the view
needs (None is a 404, whether the object is missing or another user's; a member whose
role is too low gets a 403 that names the role), parse, make one service call, render
or redirect. One URL serves a page or, to an htmx request, its fragment (a partial of
the same template), so a polled table and its page cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from graphlib import CycleError, TopologicalSorter
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import (
    BooleanField,
    ExpressionWrapper,
    F,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
)
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from builds import access, secrets, services, webhooks
from builds.forms import (
    BuildFilterForm,
    MemberAddForm,
    MemberRoleForm,
    ProjectCreateForm,
    ProjectDeleteForm,
    ProjectSettingsForm,
    ProjectTransferForm,
    RunPipelineForm,
    SecretForm,
)
from builds.logs import iter_step_lines, log_pieces, stream_text
from builds.models import (
    Build,
    Job,
    LogChunk,
    Membership,
    Project,
    Role,
    Status,
    Step,
    WebhookDelivery,
)
from builds.pipeline import PipelineError
from runners.reasons import queue_reason

PAGE_SIZE = 50
# The furthest page of a build list: 5,000,000 builds back, further than anyone pages,
# and an OFFSET that every database takes (10**30 overflowed it: a 500).
MAX_PAGE = 100_000
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
    request: HttpRequest, template: str, fragment: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    response = render(
        request, f"{template}#{fragment}" if _htmx(request) else template, context, status=status
    )
    # Page and fragment share a URL: a cache must keep them apart.
    patch_vary_headers(response, ("HX-Request",))
    return response


View = Callable[..., HttpResponse]


def _denied_as_403(view: View) -> View:
    """A member whose role is too low (access.Denied) gets 403 with the role needed:
    templates/403.html, or, to htmx (which swaps no 4xx answer), the message as a flash
    and a reload of the page it is on, which shows it."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except access.Denied as exc:
            if not _htmx(request):
                raise PermissionDenied(str(exc)) from exc
            messages.error(request, f"Not allowed: {exc}.")
            return HttpResponse(
                str(exc), status=403, content_type="text/plain", headers={"HX-Refresh": "true"}
            )

    return wrapped


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
    def of(cls, builds: QuerySet[Build], number: int) -> _Page:
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


def _page_number(requested: str | None) -> int | None:
    """The page asked for: 1 when absent or not a number (a hand-edited URL still shows
    a list), None past MAX_PAGE (the view answers 400 and says so)."""
    if not requested or not (requested.isascii() and requested.isdigit()):
        return 1
    digits = requested.lstrip("0")
    if len(digits) > len(str(MAX_PAGE)) or int(digits or "1") > MAX_PAGE:
        return None
    return int(digits or "1")


def _build_page(request: HttpRequest, builds: QuerySet[Build], path: str) -> dict[str, Any]:
    """One page of a build list, whether the table should poll for changes, and the
    page's URL (`path`: the list's page, also when a POST rendered it) to poll and page.
    `page_error` says why there is no such page (the view answers 400)."""
    builds = builds.select_related("project", "author").order_by("-id")
    number = _page_number(request.GET.get("page"))
    page_error = ""
    if number is None:
        page_error = f"There is no such page: pages go from 1 to {MAX_PAGE}."
        page = _Page(1, [], has_next=False)
    else:
        page = _Page.of(builds, number)
    _with_durations(page.object_list)
    query = request.GET.urlencode()
    return {
        "page": page,
        "page_error": page_error,
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
    projects = access.projects_for_user(request.user)
    form = BuildFilterForm(request.GET or None, projects=projects)
    builds = access.builds_for_user(request.user)
    if form.is_bound:
        builds = form.filter(builds)
    context = {
        "filters": form,
        "filtered": any(request.GET.get(name) for name in form.fields),
        **_build_page(request, builds, reverse("builds:dashboard")),
    }
    if not context["builds"] and not context["filtered"] and context["page"].number == 1:
        # A fresh dashboard says what to do next (a first project, or a first build).
        context["first_project"] = projects.first()
        context["api_builds_url"] = request.build_absolute_uri("/api/builds")
    status = 400 if context["page_error"] else 200
    return _page_or_fragment(request, "builds/dashboard.html", "build-table", context, status)


@login_required
@require_GET
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project_or_404(request, slug, access.READ)
    form = RunPipelineForm(initial={"ref": project.default_branch})
    return _project_page(request, project, form)


@login_required
@require_POST
@_denied_as_403
def project_run(request: HttpRequest, slug: str) -> HttpResponse:
    """Queue a build of a pasted or uploaded pipeline; on a problem, the form again with
    every problem beside the text (which is kept)."""
    project = _project_or_404(request, slug, access.RUN)
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


def _project_or_404(request: HttpRequest, slug: str, needed: Role) -> Project:
    project = access.find_project_for_user(request.user, slug, needed=needed)
    if project is None:
        raise Http404("no such project")
    return project


def _project_context(project: Project, form: RunPipelineForm) -> dict[str, Any]:
    return {"project": project, "form": form, **_can(project)}


def _can(project: Project) -> dict[str, bool]:
    """What the user's role on the project lets them do, to show only what they may use
    (every view checks again)."""
    role = getattr(project, "role", None)
    return {
        "can_run": access.has_role(role, access.RUN),
        "can_manage": access.has_role(role, access.MANAGE),
        "can_own": access.has_role(role, access.OWN),
    }


def _project_page(request: HttpRequest, project: Project, form: RunPipelineForm) -> HttpResponse:
    builds = access.builds_for_user(request.user).filter(project=project)
    path = reverse("builds:project", args=[project.slug])
    context = {**_project_context(project, form), **_build_page(request, builds, path)}
    status = 400 if context["page_error"] else 200
    return _page_or_fragment(request, "builds/project_detail.html", "build-table", context, status)


@login_required
@require_GET
def build_detail(request: HttpRequest, build_id: int) -> HttpResponse:
    """A build: its header, the picture of its pipeline, and a log section per step
    (the lines themselves are fetched and followed by static/logview.js). A build of
    several jobs (a matrix) has a column per job, with its steps and its picture, and
    the logs below, by job."""
    build = _build_or_404(request, build_id)
    if _htmx(request):
        # The header polls itself while the build runs (its buttons change with it).
        return _header(request, build)
    steps = list(
        Step.objects.filter(job__build=build).select_related("job").order_by("job_id", "position")
    )
    _with_step_details(steps, build)
    cells = _cells(_jobs(build), steps)
    context = {
        **_header_context(build),
        "steps": steps,
        "cells": cells,
        "graph": None if cells else _graph(steps),
    }
    response = render(request, "builds/build_detail.html", context)
    patch_vary_headers(response, ("HX-Request",))
    return response


@login_required
@require_POST
@_denied_as_403
def build_cancel(request: HttpRequest, build_id: int) -> HttpResponse:
    found = _build_or_404(request, build_id, access.RUN)
    build = services.build_cancel(build=found)
    build.project.role = found.project.role  # type: ignore[attr-defined]  # for the buttons
    if _htmx(request):
        return _header(request, build)
    return redirect("builds:build", build_id=build.pk)


@login_required
@require_POST
@_denied_as_403
def build_rerun(request: HttpRequest, build_id: int) -> HttpResponse:
    build = _build_or_404(request, build_id, access.RUN)
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
    filename = f"{build.project.slug}-{build.number}-{step.key}.log"
    return _attachment(stream_text(request, lines), filename)


@login_required
@require_GET
def build_raw(request: HttpRequest, build_id: int) -> StreamingHttpResponse:
    """The whole log: every step under a `==> name (status)` header (in a matrix
    build, `==> CELL / name (status)`)."""
    build = _build_or_404(request, build_id)
    # The API's reader: the same text as GET /api/builds/<id>/logs, streamed under ASGI.
    pieces = log_pieces(build.pk, step=None, after=0, follow=False)
    return _attachment(stream_text(request, pieces), f"{build.project.slug}-{build.number}.log")


# ---------------------------------------------------------------------------
# Projects, their settings and their members


@login_required
@require_GET
def projects(request: HttpRequest) -> HttpResponse:
    """The user's projects, each with the user's role and its last build, in one query
    (a correlated subquery per column, each on the (project, -id) index)."""
    last = Build.objects.filter(project=OuterRef("pk")).order_by("-id")
    rows = access.projects_for_user(request.user).annotate(
        last_build_id=Subquery(last.values("pk")[:1]),
        last_number=Subquery(last.values("number")[:1]),
        last_status=Subquery(last.values("status")[:1]),
        last_created_at=Subquery(last.values("created_at")[:1]),
    )
    return render(request, "builds/project_list.html", {"projects": rows})


@login_required
@require_http_methods(["GET", "POST"])
def project_new(request: HttpRequest) -> HttpResponse:
    """Any signed-in user may make a project and becomes its owner."""
    form = ProjectCreateForm(request.POST) if request.method == "POST" else ProjectCreateForm()
    if form.is_valid():
        try:
            project = services.project_create(
                user=request.user,  # type: ignore[arg-type]  # login_required
                **form.cleaned_data,
            )
        except services.Conflict:
            form.add_error("slug", "This slug is taken: choose another one.")
        else:
            messages.success(
                request, f"Project {project.slug} created: you are its owner. Run a first build."
            )
            return redirect("builds:project", slug=project.slug)
    return render(request, "builds/project_new.html", {"form": form})


@login_required
@require_http_methods(["GET", "POST"])
@_denied_as_403
def project_settings(request: HttpRequest, slug: str) -> HttpResponse:
    """Maintainers change the settings; owners also see the danger zone."""
    project = _project_or_404(request, slug, access.MANAGE)
    if request.method == "GET":
        return _settings_page(request, project)
    form = ProjectSettingsForm(request.POST)
    if not form.is_valid():
        return _settings_page(request, project, form=form)
    services.project_update(project=project, **form.cleaned_data)
    messages.success(request, "Settings saved.")
    return redirect("builds:project-settings", slug=project.slug)


@login_required
@require_POST
@_denied_as_403
def project_delete(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project_or_404(request, slug, access.OWN)
    form = ProjectDeleteForm(request.POST, project=project)
    if not form.is_valid():
        return _settings_page(request, project, delete_form=form)
    services.project_delete(project=project)
    messages.success(request, f"Project {project.slug} was deleted with all its builds.")
    return redirect("builds:projects")


@login_required
@require_POST
@_denied_as_403
def project_transfer(request: HttpRequest, slug: str) -> HttpResponse:
    """Make another member an owner. The owner who does it stays one (services.
    project_transfer), and may step down on the members page."""
    project = _project_or_404(request, slug, access.OWN)
    form = ProjectTransferForm(request.POST, candidates=_transfer_candidates(project))
    if form.is_valid():
        try:
            services.project_transfer(project=project, to=form.cleaned_data["username"])
        except services.InvalidRequest as exc:  # removed from the project meanwhile
            form.add_error("username", _sentence(exc))
        else:
            messages.success(
                request,
                f"{form.cleaned_data['username'].get_username()} is now an owner of "
                f"{project.slug}. You are one too: change your own role here to step down.",
            )
            return redirect("builds:project-members", slug=project.slug)
    return _settings_page(request, project, transfer_form=form)


def _transfer_candidates(project: Project) -> list[User]:
    members = Membership.objects.filter(project=project).exclude(role=Role.OWNER)
    return [member.user for member in members.select_related("user").order_by("user__username")]


def _settings_page(
    request: HttpRequest,
    project: Project,
    *,
    form: ProjectSettingsForm | None = None,
    delete_form: ProjectDeleteForm | None = None,
    transfer_form: ProjectTransferForm | None = None,
    secret_form: SecretForm | None = None,
) -> HttpResponse:
    initial = {name: getattr(project, name) for name in services.PROJECT_FIELDS}
    context: dict[str, Any] = {
        "project": project,
        "form": form or ProjectSettingsForm(initial=initial),
        "secrets": secrets.secret_list(project=project),
        "secret_form": secret_form or SecretForm(),
        # Shown to maintainers (this page is theirs): the secret is for them to paste
        # into the forge's webhook settings.
        "webhook_url": _webhook_url(request, project),
        "webhook_secret": services.webhook_secret(project),
        **_can(project),
    }
    if context["can_own"]:
        context["delete_form"] = delete_form or ProjectDeleteForm(project=project)
        context["transfer_form"] = transfer_form or ProjectTransferForm(
            candidates=_transfer_candidates(project)
        )
    return render(request, "builds/project_settings.html", context)


def _webhook_url(request: HttpRequest, project: Project) -> str:
    """The address to paste into the forge: GOCI_PUBLIC_URL's (what the forge reaches),
    else this request's own host."""
    path = reverse("webhook", args=[project.slug])
    if settings.GOCI_PUBLIC_URL:
        return settings.GOCI_PUBLIC_URL.rstrip("/") + path
    return request.build_absolute_uri(path)


@login_required
@require_POST
@_denied_as_403
def project_webhook_rotate(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project_or_404(request, slug, access.MANAGE)
    services.webhook_secret_rotate(project=project)
    messages.success(
        request,
        "A new webhook secret was made: paste it into the forge's webhook settings. "
        "Deliveries signed with the old one are refused from now on.",
    )
    return redirect(reverse("builds:project-settings", args=[project.slug]) + "#webhook")


@login_required
@require_GET
@_denied_as_403
def project_deliveries(request: HttpRequest, slug: str) -> HttpResponse:
    """The project's last deliveries, newest first, each with what came of it."""
    project = _project_or_404(request, slug, access.MANAGE)
    deliveries = (
        WebhookDelivery.objects.filter(project=project)
        .select_related("build")
        # A body may weigh megabytes: the page needs to know only whether there is one.
        .defer("body", "headers")
        .annotate(verified=ExpressionWrapper(Q(body__isnull=False), output_field=BooleanField()))
        .order_by("-id")[: services.MAX_DELIVERIES]
    )
    context = {
        "project": project,
        "deliveries": deliveries,
        "webhook_url": _webhook_url(request, project),
        **_can(project),
    }
    return render(request, "builds/deliveries.html", context)


@login_required
@require_POST
@_denied_as_403
def delivery_redeliver(request: HttpRequest, slug: str, delivery_id: int) -> HttpResponse:
    """Process a verified delivery's stored body again, as a new delivery with a fresh
    idempotency key: it builds again even if it built before."""
    project = _project_or_404(request, slug, access.MANAGE)
    delivery = (
        WebhookDelivery.objects.select_related("project")
        .filter(project=project, pk=delivery_id, body__isnull=False)
        .first()
    )
    if delivery is None:
        raise Http404("no such delivery, or it was not verified")
    answer = webhooks.redeliver(delivery, author=request.user)  # type: ignore[arg-type]  # login_required
    notice = f"Redelivered: {answer.detail}"
    if answer.delivery.outcome == WebhookDelivery.Outcome.BUILD:
        messages.success(request, notice)
    else:
        messages.warning(request, notice)
    return redirect("builds:project-deliveries", slug=project.slug)


@login_required
@require_POST
@_denied_as_403
def project_secret_set(request: HttpRequest, slug: str) -> HttpResponse:
    """Maintainers create or change a secret; its value is never shown back."""
    project = _project_or_404(request, slug, access.MANAGE)
    form = SecretForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            _, created = secrets.secret_set(
                project=project,
                name=data["name"],
                value=data["value"] or None,
                user=request.user,  # type: ignore[arg-type]  # login_required
                events=data["events"],
                branches=data["branches"],
            )
        except secrets.SecretError as exc:
            form.add_error(None, _sentence(exc))
        else:
            messages.success(
                request, f"Secret {data['name']} {'created' if created else 'changed'}."
            )
            return redirect(reverse("builds:project-settings", args=[project.slug]) + "#secrets")
    return _settings_page(request, project, secret_form=form)


@login_required
@require_POST
@_denied_as_403
def project_secret_delete(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    project = _project_or_404(request, slug, access.MANAGE)
    if not secrets.secret_delete(project=project, name=name):
        raise Http404("no such secret")
    messages.success(request, f"Secret {name} deleted.")
    return redirect(reverse("builds:project-settings", args=[project.slug]) + "#secrets")


@login_required
@require_http_methods(["GET", "POST"])
@_denied_as_403
def project_members(request: HttpRequest, slug: str) -> HttpResponse:
    """Every member sees who is on the project (and so whom to ask for a role);
    maintainers add members (POST), and only owners make owners."""
    project = _project_or_404(request, slug, access.READ)
    if request.method == "GET":
        return _members_page(request, project)
    access.require(project, access.MANAGE)
    form = MemberAddForm(request.POST)
    if form.is_valid():
        user, role = form.cleaned_data["username"], form.cleaned_data["role"]
        access.require_member_change(project, None, role)
        try:
            services.member_add(project=project, user=user, role=role)
        except services.Conflict as exc:
            form.add_error("username", _sentence(exc))
        else:
            return _members_changed(request, slug, f"{user.get_username()} is now {_a(role)}.")
    return _members_page(request, project, add_form=form)


@login_required
@require_POST
@_denied_as_403
def member_change(request: HttpRequest, slug: str, username: str) -> HttpResponse:
    project = _project_or_404(request, slug, access.MANAGE)
    membership = _membership_or_404(project, username)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        return _members_page(request, project, error=f"Role of {username}: choose a role.")
    role = form.cleaned_data["role"]
    access.require_member_change(project, membership.role, role)
    try:
        services.member_change(membership=membership, role=role)
    except services.InvalidRequest as exc:
        return _members_page(
            request, project, error=f"{username} stays {_a(membership.role)}. {_sentence(exc)}"
        )
    return _members_changed(request, slug, f"{username} is now {_a(role)}.")


@login_required
@require_POST
@_denied_as_403
def member_remove(request: HttpRequest, slug: str, username: str) -> HttpResponse:
    project = _project_or_404(request, slug, access.MANAGE)
    membership = _membership_or_404(project, username)
    access.require_member_change(project, membership.role)
    try:
        services.member_remove(membership=membership)
    except services.InvalidRequest as exc:
        return _members_page(request, project, error=f"Cannot remove {username}. {_sentence(exc)}")
    return _members_changed(request, slug, f"{username} is no longer a member of {slug}.")


def _membership_or_404(project: Project, username: str) -> Membership:
    membership = access.find_member(project, username)
    if membership is None:
        raise Http404("no such member")
    return membership


def _members_page(
    request: HttpRequest,
    project: Project,
    *,
    add_form: MemberAddForm | None = None,
    error: str = "",
    notice: str = "",
) -> HttpResponse:
    can = _can(project)
    context = {
        "project": project,
        "members": Membership.objects.filter(project=project)
        .select_related("user")
        .order_by("user__username"),
        "add_form": add_form or MemberAddForm(initial={"role": Role.DEVELOPER}),
        # Maintainers are not offered the owner role (the views refuse it too).
        "roles": [(v, label) for v, label in Role.choices if can["can_own"] or v != Role.OWNER],
        "error": error,
        "notice": notice,
        **can,
    }
    return _page_or_fragment(request, "builds/project_members.html", "members", context)


def _members_changed(request: HttpRequest, slug: str, notice: str) -> HttpResponse:
    """After a change, the list as the user may now see it: their own role may be what
    changed, or they may have left the project."""
    project = access.find_project_for_user(request.user, slug)
    if project is None:
        messages.success(request, notice)
        return _redirect(request, reverse("builds:projects"))
    if _htmx(request):
        return _members_page(request, project, notice=notice)
    messages.success(request, notice)
    return redirect("builds:project-members", slug=slug)


def _a(role: str) -> str:
    return f"{'an' if role[0] in 'aeiou' else 'a'} {role}"


def _sentence(exc: Exception) -> str:
    text = str(exc)
    return f"{text[:1].upper()}{text[1:]}."


# ---------------------------------------------------------------------------
# Helpers


def _build_or_404(request: HttpRequest, build_id: int, needed: Role = access.READ) -> Build:
    build = access.find_build_for_user(request.user, build_id, needed=needed)
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
    runs = access.has_role(getattr(build.project, "role", None), access.RUN)
    superseded_by = None
    if build.superseded_by_id is not None:
        superseded_by = Build.objects.filter(pk=build.superseded_by_id).only("number").first()
    return {
        "build": build,
        "superseded_by": superseded_by,
        # Only a web address becomes a link (a payload could hold a javascript: one).
        "compare_link": build.compare_url
        if build.compare_url.startswith(("https://", "http://"))
        else "",
        # The server's clock, which logview.js's running durations count from.
        "now": timezone.now(),
        # Buttons only for those who may use them (the views check again).
        "can_cancel": runs and build.status in ACTIVE and not build.cancel_requested,
        "can_rerun": runs and build.finished,
        "can_manage": access.has_role(getattr(build.project, "role", None), access.MANAGE),
        # Why it waits; the header polls itself, so this follows the queue and runners.
        "queue_reason": queue_reason(build),
    }


def _header(request: HttpRequest, build: Build) -> HttpResponse:
    context = _header_context(build)
    # A matrix build's job badges come with the header, swapped in out of band: the
    # header polls while the build runs, and once more when it ends.
    jobs = _jobs(build)
    context["job_badges"] = jobs if len(jobs) > 1 else []
    return render(request, "builds/build_detail.html#build-header", context)


def _jobs(build: Build) -> list[Job]:
    return list(Job.objects.filter(build=build).order_by("id"))


@dataclass(frozen=True)
class _Cell:
    """One job of a build of several (a matrix cell): its steps and their picture."""

    job: Job
    steps: list[Step]
    graph: _Graph


def _cells(jobs: list[Job], steps: list[Step]) -> list[_Cell]:
    """A cell per job of a build of several, in job order; [] for a build of one."""
    if len(jobs) < 2:
        return []
    by_job: dict[int, list[Step]] = {job.pk: [] for job in jobs}
    for step in steps:
        by_job[step.job_id].append(step)
    return [_Cell(job, by_job[job.pk], _graph(by_job[job.pk])) for job in jobs]


def _with_step_details(steps: list[Step], build: Build) -> None:
    """Each step's duration, whether it starts open, and the number of its last stored
    line of the current attempt (logview.js starts from it), in one query for all steps.

    In a failed build only what went wrong is open: the reader came for the failure."""
    failed = build.status in (Status.FAILURE, Status.ERROR)
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
        step.open = not failed or step.status in (Status.FAILURE, Status.ERROR)  # type: ignore[attr-defined]


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
    needs_of = {
        step.pk: [need.pk for name in step.needs if (need := by_name.get((step.job_id, name)))]
        for step in steps
    }
    try:
        # Needs before the steps that wait for them, without recursion: a chain of
        # hundreds of steps would exceed Python's recursion limit.
        order = list(TopologicalSorter(needs_of).static_order())
    except CycleError:  # only in a damaged row (plan() forbids cycles): ignore such needs
        order = [step.pk for step in steps]
    depth: dict[int, int] = {}
    for pk in order:
        depth[pk] = 1 + max((depth[need] for need in needs_of[pk] if need in depth), default=-1)
    rows: dict[int, int] = {}
    nodes: dict[int, _Node] = {}
    for step in steps:
        column = depth[step.pk]
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
