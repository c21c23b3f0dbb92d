"""Webhook endpoints per merchant, their delivery log and manual redelivery.

Sending is the delivery job's business (`zpay.jobs.delivery`); this module only
manages what merchants configure and read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.custody import SealedSecret
from zpay.domain.errors import Conflict, InvalidRequest, NotFound
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.events import EVENT_TYPES
from zpay.services.pagination import Page, page_body
from zpay.services.tenancy import fetch_owned
from zpay.services.views import delivery_view, endpoint_view
from zpay.store.ids import new_id
from zpay.store.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from zpay.webhooks.signing import generate_secret
from zpay.webhooks.ssrf import UnsafeWebhookUrl, validate_url

MAX_ENDPOINTS_PER_MERCHANT = 20
MAX_URL_CHARS = 2000
DELIVERY_STATUSES = ("pending", "succeeded", "failed")
Json = dict[str, Any]
UPDATABLE = frozenset({"url", "description", "event_types", "enabled"})


@dataclass(frozen=True)
class EndpointRequest:
    url: str
    description: str | None = None
    event_types: list[str] | None = None  # None = every event type
    enabled: bool = True


def endpoint_secret(ctx: AppContext, endpoint: WebhookEndpoint) -> str:
    sealed = SealedSecret(endpoint.secret_key_version, endpoint.secret_wrapped_key,
                          endpoint.secret_ciphertext)
    return ctx.custody.open(endpoint.id, sealed).decode()


def matches(endpoint: WebhookEndpoint, event_type: str) -> bool:
    return endpoint.event_types is None or event_type in endpoint.event_types


async def _checked_url(ctx: AppContext, url: str) -> str:
    url = url.strip()
    if not url or len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"url must be 1 to {MAX_URL_CHARS} characters",
                             code="invalid_webhook_url")
    try:
        await validate_url(url, allow_private=ctx.settings.webhooks_allow_private)
    except UnsafeWebhookUrl as exc:
        raise InvalidRequest(str(exc), code=UnsafeWebhookUrl.code, reason=exc.reason) from None
    return url


def _checked_types(types: Iterable[str] | None) -> list[str] | None:
    if types is None:
        return None
    chosen = list(dict.fromkeys(types))
    if not chosen:
        # An empty filter would be an endpoint that silently gets nothing.
        raise InvalidRequest("event_types must name at least one type, or be null for all",
                             code="invalid_event_types")
    unknown = [t for t in chosen if t not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(f"unknown event types: {', '.join(unknown)}",
                             code="unknown_event_type", known_event_types=list(EVENT_TYPES))
    return chosen


async def load_endpoint(s: AsyncSession, principal: Principal, endpoint_id: str,
                        *, lock: bool = False) -> WebhookEndpoint:
    row = await fetch_owned(s, WebhookEndpoint, endpoint_id, principal, lock=lock)
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}", code="webhook_endpoint_not_found")
    return row


async def create_endpoint(ctx: AppContext, principal: Principal,
                          req: EndpointRequest) -> Json:
    principal.require_merchant("manage webhook endpoints")
    url = await _checked_url(ctx, req.url)
    types = _checked_types(req.event_types)
    now = ctx.now()
    endpoint_id = new_id("we")
    secret = generate_secret()
    sealed = ctx.custody.seal(endpoint_id, secret.encode())
    async with ctx.db.transaction() as s:
        count = (await s.execute(select(func.count()).select_from(WebhookEndpoint).where(
            WebhookEndpoint.merchant_id == principal.merchant_id))).scalar_one()
        if count >= MAX_ENDPOINTS_PER_MERCHANT:
            raise Conflict(f"at most {MAX_ENDPOINTS_PER_MERCHANT} webhook endpoints per merchant",
                           code="too_many_webhook_endpoints")
        endpoint = WebhookEndpoint(
            id=endpoint_id, merchant_id=principal.merchant_id, url=url,
            description=req.description, event_types=types, enabled=req.enabled,
            disabled_reason=None, secret_key_version=sealed.key_version,
            secret_wrapped_key=sealed.wrapped_data_key, secret_ciphertext=sealed.ciphertext,
            consecutive_failures=0, created_at=now, updated_at=now)
        s.add(endpoint)
    return {**endpoint_view(endpoint), "secret": secret}


async def list_endpoints(ctx: AppContext, principal: Principal, page: Page) -> Json:
    principal.require_merchant("manage webhook endpoints")
    async with ctx.db.sessions() as s:
        stmt = select(WebhookEndpoint).where(WebhookEndpoint.merchant_id == principal.merchant_id)
        rows = (await s.execute(page.apply(stmt, WebhookEndpoint.id))).scalars().all()
    return page_body(rows, page, endpoint_view)


async def get_endpoint(ctx: AppContext, principal: Principal, endpoint_id: str) -> Json:
    principal.require_merchant("manage webhook endpoints")
    async with ctx.db.sessions() as s:
        return endpoint_view(await load_endpoint(s, principal, endpoint_id))


async def update_endpoint(ctx: AppContext, principal: Principal, endpoint_id: str,
                          changes: Mapping[str, Any]) -> Json:
    """Apply the fields present in `changes` (a PATCH: absent = unchanged, null = cleared)."""
    principal.require_merchant("manage webhook endpoints")
    assert set(changes) <= UPDATABLE, set(changes) - UPDATABLE
    url = await _checked_url(ctx, changes["url"]) if "url" in changes else None
    types = _checked_types(changes["event_types"]) if "event_types" in changes else None
    async with ctx.db.transaction() as s:
        endpoint = await load_endpoint(s, principal, endpoint_id, lock=True)
        if url is not None:
            endpoint.url = url
        if "event_types" in changes:
            endpoint.event_types = types
        if "description" in changes:
            endpoint.description = changes["description"]
        if "enabled" in changes:
            enabled = bool(changes["enabled"])
            if enabled and not endpoint.enabled:
                # A merchant re-enabling has fixed the receiver: start counting afresh.
                endpoint.consecutive_failures, endpoint.disabled_reason = 0, None
            elif not enabled and endpoint.enabled:
                endpoint.disabled_reason = "disabled by the merchant"
            endpoint.enabled = enabled
        endpoint.updated_at = ctx.now()
    return endpoint_view(endpoint)


async def delete_endpoint(ctx: AppContext, principal: Principal,
                          endpoint_id: str) -> Json:
    """Deletes the endpoint with its delivery log; a send in flight finds no row to update."""
    principal.require_merchant("manage webhook endpoints")
    async with ctx.db.transaction() as s:
        endpoint = await load_endpoint(s, principal, endpoint_id, lock=True)
        deliveries = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint.id)
        await s.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
        await s.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
        await s.delete(endpoint)
    return {**endpoint_view(endpoint), "deleted": True}


async def _bodies(s: AsyncSession, deliveries: list[WebhookDelivery]) -> dict[str, Json]:
    """Each delivery with its attempt log and its event's type, in two queries."""
    ids = [d.id for d in deliveries]
    attempts: dict[str, list[WebhookAttempt]] = {i: [] for i in ids}
    types: dict[str, str] = {}
    if ids:
        for attempt in (await s.execute(select(WebhookAttempt).where(
                WebhookAttempt.delivery_id.in_(ids)).order_by(WebhookAttempt.attempt_number,
                                                              WebhookAttempt.id))).scalars():
            attempts[attempt.delivery_id].append(attempt)
        rows = await s.execute(select(Event.id, Event.type).where(
            Event.id.in_({d.event_id for d in deliveries})))
        types = {event_id: event_type for event_id, event_type in rows}
    return {d.id: {**delivery_view(d, attempts[d.id]), "event_type": types.get(d.event_id)}
            for d in deliveries}


async def list_deliveries(ctx: AppContext, principal: Principal, endpoint_id: str, page: Page,
                          status: str | None = None) -> Json:
    principal.require_merchant("read webhook deliveries")
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(DELIVERY_STATUSES)}",
                             code="invalid_status")
    async with ctx.db.sessions() as s:
        endpoint = await load_endpoint(s, principal, endpoint_id)
        stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
        if status is not None:
            stmt = stmt.where(WebhookDelivery.status == status)
        rows = (await s.execute(page.apply(stmt, WebhookDelivery.id))).scalars().all()
        bodies = await _bodies(s, list(rows[: page.limit]))
    return page_body(rows, page, lambda d: bodies[d.id])


async def _load_delivery(s: AsyncSession, principal: Principal, delivery_id: str,
                         *, lock: bool = False) -> WebhookDelivery:
    stmt = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                         WebhookDelivery.merchant_id == principal.merchant_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await s.execute(stmt)).scalar()
    if row is None:
        raise NotFound(f"no webhook delivery {delivery_id!r}", code="webhook_delivery_not_found")
    return row


async def get_delivery(ctx: AppContext, principal: Principal, delivery_id: str) -> Json:
    principal.require_merchant("read webhook deliveries")
    async with ctx.db.sessions() as s:
        delivery = await _load_delivery(s, principal, delivery_id)
        return (await _bodies(s, [delivery]))[delivery.id]


async def redeliver(ctx: AppContext, principal: Principal, delivery_id: str) -> Json:
    """Queue one more attempt now. It continues the delivery's retry schedule, so a delivery
    that has used all its attempts gets exactly one more; `webhook-id` stays the event id."""
    principal.require_merchant("redeliver webhooks")
    now = ctx.now()
    async with ctx.db.transaction() as s:
        endpoint_id = (await s.execute(select(WebhookDelivery.endpoint_id).where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.merchant_id == principal.merchant_id))).scalar()
        if endpoint_id is None:
            raise NotFound(f"no webhook delivery {delivery_id!r}",
                           code="webhook_delivery_not_found")
        # Endpoint before delivery: the lock order the delivery job uses too.
        endpoint = await load_endpoint(s, principal, endpoint_id, lock=True)
        if not endpoint.enabled:
            raise Conflict("the webhook endpoint is disabled; enable it first",
                           code="webhook_endpoint_disabled")
        delivery = await _load_delivery(s, principal, delivery_id, lock=True)
        delivery.status, delivery.next_attempt_at, delivery.updated_at = "pending", now, now
        return (await _bodies(s, [delivery]))[delivery.id]
