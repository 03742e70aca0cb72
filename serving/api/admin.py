"""Admin API: ``POST /admin/reload`` (serve another router folder) and ``POST /admin/rollback``.

Both need ``Authorization: Bearer <admin_key>`` (401 without it, 403 with a wrong key or when no
``admin_key`` is configured); they are exempt from ``api_key``, which guards the routing API.

A reload loads the folder and runs a warm-up prediction in a worker thread while the current router
keeps serving, then swaps the two atomically: requests that already started (queued or being
predicted) finish on the router they started with, requests arriving after the swap use the new one.
The replaced router is kept for ``/admin/rollback`` (which swaps the two again). A folder that cannot
be loaded, does not match the settings (endpoint overrides, exploration boost models) or fails its
warm-up is answered with 422 and changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from neural_router.serving.api.schemas import AdminResponse, ErrorResponse, ReloadRequest
from neural_router.serving.engine.fleet import FleetError, FleetWatcher
from neural_router.serving.engine.service import RouterService, RouterState

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False, scheme_name="AdminKey",
                     description="Authorization: Bearer <admin_key>")


async def require_admin(request: Request,
                        credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> None:
    key = request.app.state.settings.admin_key
    if key is None:
        raise HTTPException(403, "admin endpoints are disabled: set admin_key (NEURAL_ROUTER_ADMIN_KEY)")
    if credentials is None:
        raise HTTPException(401, "admin endpoints need 'Authorization: Bearer <admin_key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(credentials.credentials.encode(), key.get_secret_value().encode()):
        raise HTTPException(403, "wrong admin key")


_ERR = {"model": ErrorResponse}
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses={400: {**_ERR, "description": "Body is not parseable."},
                              401: {**_ERR, "description": "No bearer key."},
                              403: {**_ERR, "description": "Wrong key, or no admin_key configured."}})


def _response(svc: RouterService) -> AdminResponse:
    return AdminResponse(router_version=svc.state.version,
                         previous_version=svc.previous.version if svc.previous else None,
                         models=list(svc.state.models))


@router.post("/reload", response_model=AdminResponse, summary="Serve another router folder",
             responses={422: {**_ERR, "description": "The folder cannot be served; the current "
                                                     "router keeps serving."},
                        503: {**_ERR, "description": "The router registry cannot be written."}})
async def reload(body: ReloadRequest, request: Request) -> AdminResponse:
    """Load ``router_dir``, warm it up, and swap it in without dropping in-flight requests. The
    replaced router is kept for ``/admin/rollback``."""
    svc: RouterService = request.app.state.service
    metrics = request.app.state.metrics
    async with request.app.state.admin_lock:  # one reload at a time
        try:
            state = await asyncio.to_thread(RouterState.load, body.router_dir, svc.settings)
        except ValueError as e:
            metrics.reloads.labels("reload", "error").inc()
            raise HTTPException(422, f"cannot serve the router folder {body.router_dir}: {e}; router "
                                     f"{svc.state.version} keeps serving") from None
        fleet: FleetWatcher | None = request.app.state.fleet
        if fleet is not None:   # recorded before the swap, so that every replica follows it
            try:
                await fleet.record("reload", state.version, str(state.router_dir), f"admin@{fleet.replica}")
            except FleetError as e:
                metrics.reloads.labels("reload", "error").inc()
                raise HTTPException(503, str(e)) from None
        old = svc.swap(state)
    metrics.reloads.labels("reload", "ok").inc()
    log.info("reloaded: router %s (%s) replaces %s", state.version, body.router_dir, old.version)
    return _response(svc)


@router.post("/rollback", response_model=AdminResponse, summary="Serve the previous router again",
             responses={409: {**_ERR, "description": "No previous router (nothing was reloaded)."},
                        422: {**_ERR, "description": "The registry's previous router cannot be served."},
                        503: {**_ERR, "description": "The router registry cannot be written."}})
async def rollback(request: Request) -> AdminResponse:
    """Swap back to the router replaced by the last reload (or rollback). With a router registry
    (docs/fleet.md), back to the registry's previous router, recorded so that every replica follows
    (422: its folder cannot be served here; 503: the registry cannot be written; nothing changes)."""
    svc: RouterService = request.app.state.service
    fleet: FleetWatcher | None = request.app.state.fleet
    async with request.app.state.admin_lock:
        try:
            state = await fleet.rollback(f"admin@{fleet.replica}") if fleet is not None else svc.rollback()
        except (LookupError, ValueError, FleetError) as e:
            request.app.state.metrics.reloads.labels("rollback", "error").inc()
            status = 409 if isinstance(e, LookupError) else 503 if isinstance(e, FleetError) else 422
            raise HTTPException(status, str(e)) from None
    request.app.state.metrics.reloads.labels("rollback", "ok").inc()
    log.info("rolled back to router %s", state.version)
    return _response(svc)
