"""Pages of manual runs with inputs ("Run" on the project page), of a project's
environments and deployments, and the buttons that approve, reject and redeploy
(docs/deployments.md). The changes go through builds/services.py and
builds/deployments.py; every view checks the role again."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from builds import access, deployments, refs, services
from builds.models import Build, Deployment, Project
from builds.pipeline import (
    MAX_INPUT_VALUE,
    Input,
    InputsError,
    Pipeline,
    PipelineError,
    load,
)
from builds.views import _can, _denied_as_403, _project_or_404, _redirect

FIELD = "input_"  # the form field of input NAME is input_NAME


class RunRefForm(forms.Form):
    """A ref and a field for each of the pipeline's `inputs:` at that ref."""

    ref = forms.CharField(label="Branch or tag", max_length=255, required=False)

    def __init__(self, *args: Any, inputs: tuple[Input, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inputs = inputs
        for item in inputs:
            field: forms.Field
            if item.type == "boolean":
                field = forms.BooleanField(required=False, initial=item.default == "true")
            elif item.type == "choice":
                field = forms.ChoiceField(
                    choices=[(option, option) for option in item.options],
                    initial=item.default,
                    required=False,
                )
            else:
                field = forms.CharField(
                    initial=item.default, required=False, max_length=MAX_INPUT_VALUE
                )
            field.label = item.name
            field.help_text = item.description + (" (required)" if item.required else "")
            self.fields[FIELD + item.name] = field

    def values(self) -> dict[str, object]:
        data = self.cleaned_data
        return {
            item.name: data.get(FIELD + item.name)
            for item in self.inputs
            if data.get(FIELD + item.name) not in (None, "") or item.type == "boolean"
        }


def _pipeline_at(project: Project, ref: str) -> tuple[Pipeline | None, str, dict[str, str] | None]:
    """The pipeline the Run form would run at `ref`, or None and why not; and the
    repository's branches and tags if they were read on the way."""
    seen = None
    try:
        if project.repo_url:
            at = refs.pipeline_at(project, ref or project.default_branch)
            text, seen = at.pipeline, at.refs
        elif project.pipeline:
            text = project.pipeline
        else:
            return None, "This project has neither a repository nor a stored pipeline.", None
        return load(text, project.pipeline_path), "", seen
    except (refs.RefError, PipelineError) as error:
        return None, str(error), seen


def _run_context(
    project: Project, form: RunRefForm, problem: str, seen: dict[str, str] | None
) -> dict[str, Any]:
    branches: list[str] = []
    tags: list[str] = []
    if project.repo_url:
        try:
            branches, tags = refs.choices(project, seen)
        except refs.RefError as error:
            problem = problem or str(error)
    return {
        "project": project,
        "run_form": form,
        "branches": branches,
        "tags": tags,
        "problem": problem,
        **_can(project),
    }


@login_required
@require_http_methods(["GET", "POST"])
@_denied_as_403
def project_run_ref(request: HttpRequest, slug: str) -> HttpResponse:
    """GET: the Run form for a ref (its pipeline's inputs as fields), loaded into the
    project page by htmx. POST: run the pipeline at that ref with those inputs."""
    project = _project_or_404(request, slug, access.RUN)
    source = request.POST if request.method == "POST" else request.GET
    ref = str(source.get("ref", "") or project.default_branch)[:255]
    pipeline, problem, seen = _pipeline_at(project, ref)
    inputs = pipeline.inputs if pipeline is not None else ()
    if request.method == "GET":
        form = RunRefForm(initial={"ref": ref}, inputs=inputs)
        return render(request, "builds/_run_ref.html", _run_context(project, form, problem, seen))
    form = RunRefForm(request.POST, inputs=inputs)
    if pipeline is not None and form.is_valid():
        try:
            build = services.run_pipeline(
                project=project,
                ref=ref,
                inputs=form.values(),
                trigger=Build.Trigger.MANUAL,
                author=_user(request),
            )
        except InputsError as error:
            for name, message in error.problems:
                field = FIELD + name
                form.add_error(field if field in form.fields else None, f"{name}: {message}")
        except (services.InvalidRequest, refs.RefError, PipelineError) as error:
            form.add_error(None, str(error))  # a protected environment's refusal too
        else:
            return _redirect(request, reverse("builds:build", args=[build.pk]))
    return render(
        request, "builds/_run_ref.html", _run_context(project, form, problem, seen), status=200
    )


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)  # login_required
    return user


@login_required
@require_GET
def project_environments(request: HttpRequest, slug: str) -> HttpResponse:
    """Each environment: what is deployed there now (build, commit, who, when, URL) and
    its deployments, with Redeploy on the successful ones."""
    project = _project_or_404(request, slug, access.READ)
    environments = [
        {
            "environment": environment,
            "current": deployments.current(environment),
            "history": list(deployments.history(environment)[:50]),
        }
        for environment in project.environments.all()
    ]
    context = {"project": project, "environments": environments, **_can(project)}
    return render(request, "builds/environments.html", context)


def _deployment(project: Project, deployment_id: int) -> Deployment:
    found = (
        Deployment.objects.select_related("environment", "build")
        .filter(environment__project=project, pk=deployment_id)
        .first()
    )
    if found is None:
        raise Http404("no such deployment")
    return found


def _back(request: HttpRequest, project: Project, deployment: Deployment) -> HttpResponse:
    if request.POST.get("next") == "build":
        return _redirect(request, reverse("builds:build", args=[deployment.build.pk]))
    return _redirect(request, reverse("builds:project-environments", args=[project.slug]))


@login_required
@require_POST
@_denied_as_403
def deployment_redeploy(request: HttpRequest, slug: str, deployment_id: int) -> HttpResponse:
    """Roll back to an earlier successful deployment: its pipeline at its commit."""
    project = _project_or_404(request, slug, access.RUN)
    deployment = _deployment(project, deployment_id)
    try:
        build = deployments.redeploy(deployment=deployment, user=_user(request))
    except (services.InvalidRequest, PipelineError) as error:
        messages.error(request, str(error))
        return _back(request, project, deployment)
    return _redirect(request, reverse("builds:build", args=[build.pk]))


@login_required
@require_POST
@_denied_as_403
def deployment_decide(
    request: HttpRequest, slug: str, deployment_id: int, decision: str
) -> HttpResponse:
    """Approve or reject a deployment that waits for approval."""
    project = _project_or_404(request, slug, access.MANAGE)
    deployment = _deployment(project, deployment_id)
    decide = deployments.approve if decision == "approve" else deployments.reject
    try:
        decide(deployment=deployment, user=_user(request))
    except deployments.Refused as error:
        messages.error(request, str(error))
    else:
        done = "approved" if decision == "approve" else "rejected"
        messages.success(request, f"The deployment to {deployment.environment.name} is {done}.")
    return _back(request, project, deployment)


@login_required
@require_POST
@_denied_as_403
def environment_protect(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    """A maintainer sets an environment's protection and approval."""
    project = _project_or_404(request, slug, access.MANAGE)
    environment = project.environments.filter(name=name).first()
    if environment is None:
        raise Http404("no such environment")
    deployments.environment_update(
        environment=environment,
        protected=request.POST.get("protected") == "on",
        approval=request.POST.get("approval") == "on",
    )
    messages.success(request, f"{environment.name}: protection saved.")
    return _redirect(request, reverse("builds:project-environments", args=[project.slug]))
