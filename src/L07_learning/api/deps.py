"""FastAPI dependencies and their ``Annotated`` aliases: context, caller, permission checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .auth import Permission, Principal
from .context import AppContext

bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer", description="`Authorization: Bearer <API key>`")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="The API key")


def get_context(request: Request) -> AppContext:
    """The app's shared context."""
    return request.app.state.l07


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_principal(
    request: Request,
    ctx: ContextDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Principal:
    """The caller behind the presented key (401 when there is none or it is unknown or revoked)."""
    token = bearer.credentials if bearer is not None else api_key
    principal = await ctx.auth.authenticate(token)
    # The middleware reads it to audit the call under this key, refused or not.
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def metrics_access(
    request: Request,
    ctx: ContextDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> None:
    """``GET /metrics``: open when ``L07_API_PUBLIC_METRICS=true``, else a key whose role may read metrics."""
    if ctx.config.public_metrics:
        return
    principal = await get_principal(request, ctx, bearer, api_key)
    principal.require(Permission.METRICS_READ)


MetricsAccess = Annotated[None, Depends(metrics_access)]


def requires(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets the call through only when the caller's role grants ``permission`` (else 403)."""

    async def check(principal: PrincipalDep) -> Principal:
        principal.require(permission)
        return principal

    check.__name__ = f"requires_{permission.value.replace('.', '_')}"
    return check


CanIngest = Annotated[Principal, Depends(requires(Permission.EVENTS_INGEST))]
CanListModels = Annotated[Principal, Depends(requires(Permission.MODEL_LIST))]
CanGetModel = Annotated[Principal, Depends(requires(Permission.MODEL_GET))]
CanTrain = Annotated[Principal, Depends(requires(Permission.MODEL_CREATE))]
CanManageJobs = Annotated[Principal, Depends(requires(Permission.MODEL_TRAIN_LOG))]
CanGetJob = Annotated[Principal, Depends(requires(Permission.JOB_GET))]
CanListDatasets = Annotated[Principal, Depends(requires(Permission.DATASET_LIST))]
CanValidate = Annotated[Principal, Depends(requires(Permission.MODEL_VALIDATE))]
CanRollback = Annotated[Principal, Depends(requires(Permission.MODEL_ROLLBACK))]
CanDeploy = Annotated[Principal, Depends(requires(Permission.MODEL_DEPLOY_TO_STAGING))]
CanReadAudit = Annotated[Principal, Depends(requires(Permission.AUDIT_LOG))]
