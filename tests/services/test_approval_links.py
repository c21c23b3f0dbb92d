"""Approval links: signed, expiring, single-purpose; nothing about them can be changed."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from zpay.custody import Custody
from zpay.services import approval_links
from zpay.services.approval_links import LinkExpired, LinkInvalid
from zpay.services.context import AppContext
from zpay.settings import Settings, frame_ancestors

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
KEY, APPROVAL = "skey_019b7a3c2e10aa11bb22cc33dd44", "apr_019b7a3c2e10ee55ff6677889900"


@dataclass
class Ctx:
    custody: Custody = field(default_factory=lambda: Custody({1: secrets.token_bytes(32)}, 1))
    settings: Settings = field(default_factory=Settings)
    moment: datetime = NOW

    def now(self) -> datetime:
        return self.moment


def _ctx(**kw: Any) -> AppContext:
    return cast(AppContext, Ctx(**kw))


def test_a_link_grants_its_approval_until_it_expires() -> None:
    ctx = _ctx()
    link = approval_links.mint(ctx, KEY, APPROVAL, NOW + timedelta(hours=1))
    grant = approval_links.verify(ctx, link)
    assert (grant.key_id, grant.approval_id, grant.expires_at) == (
        KEY, APPROVAL, NOW + timedelta(hours=1))
    cast(Ctx, ctx).moment = NOW + timedelta(hours=1)
    with pytest.raises(LinkExpired) as expired:
        approval_links.verify(ctx, link)
    assert expired.value.grant == grant  # still says whose it was


def test_any_change_to_a_link_voids_it() -> None:
    ctx = _ctx()
    link = approval_links.mint(ctx, KEY, APPROVAL, NOW + timedelta(hours=1))
    for i, char in enumerate(link):
        for other in {"A", "b", "-"} - {char}:
            with pytest.raises(LinkInvalid):
                approval_links.verify(ctx, link[:i] + other + link[i + 1:])
    body, tag = link.split(".")
    widened = base64.urlsafe_b64encode(
        f"{KEY}.{APPROVAL}.{int((NOW + timedelta(days=365)).timestamp())}".encode())
    for bad in ("", ".", body, f"{widened.rstrip(b'=').decode()}.{tag}", link + "A",
                f"{body}.{tag}.x"):
        with pytest.raises(LinkInvalid):
            approval_links.verify(ctx, bad)


def test_links_are_bound_to_the_master_key_and_survive_a_rotation() -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    before = _ctx(custody=Custody({1: old}, 1))
    link = approval_links.mint(before, KEY, APPROVAL, NOW + timedelta(hours=1))
    with pytest.raises(LinkInvalid):  # another deployment's key
        approval_links.verify(_ctx(custody=Custody({1: new}, 1)), link)
    rotated = _ctx(custody=Custody({1: old, 2: new}, 2))
    assert approval_links.verify(rotated, link).key_id == KEY
    fresh = approval_links.mint(rotated, KEY, APPROVAL, NOW + timedelta(hours=1))
    with pytest.raises(LinkInvalid):  # signed with the new key: the old one alone fails
        approval_links.verify(before, fresh)


def test_derived_keys_are_per_purpose_and_never_the_master_key() -> None:
    master = secrets.token_bytes(32)
    custody = Custody({1: master}, 1)
    [links] = custody.derived_keys("approval-links")
    [other] = custody.derived_keys("something-else")
    assert len({links, other, master}) == 3 and len(links) == 32


def test_url_names_the_public_url_and_never_outlives_the_key() -> None:
    ctx = _ctx(settings=Settings(public_url="https://pay.example.com/", approval_link_ttl_s=60))
    soon = SimpleNamespace(id=KEY, expires_at=NOW + timedelta(seconds=10))
    later = SimpleNamespace(id=KEY, expires_at=NOW + timedelta(days=1))
    approval = SimpleNamespace(id=APPROVAL)
    for key, expiry in ((soon, NOW + timedelta(seconds=10)), (later, NOW + timedelta(seconds=60))):
        url = approval_links.url_for(ctx, cast(Any, key), cast(Any, approval))
        assert url.startswith("https://pay.example.com/approve/")
        grant = approval_links.verify(ctx, url.rsplit("/", 1)[1])
        assert grant.expires_at == expiry


def test_settings_public_url_and_frame_ancestors() -> None:
    assert Settings.from_env({}).base_url == "http://127.0.0.1:8000"
    assert Settings.from_env({"ZPAY_HOST": "0.0.0.0", "ZPAY_PORT": "9000"}).base_url == (
        "http://0.0.0.0:9000")
    env = {"ZPAY_PUBLIC_URL": "https://pay.example.com",
           "ZPAY_FRAME_ANCESTORS": "'self', https://shop.example https://*.shop.example:8443"}
    settings = Settings.from_env(env)
    assert settings.base_url == "https://pay.example.com"
    assert settings.frame_ancestors == ("'self'", "https://shop.example",
                                        "https://*.shop.example:8443")
    assert Settings.from_env({}).frame_ancestors == ("'none'",)
    for bad in ("", "'none' https://shop.example", "https://shop.example; script-src *",
                "https://shop.example\r\nX-Evil: 1", "javascript:alert(1)"):
        with pytest.raises(ValueError):
            frame_ancestors(bad)
