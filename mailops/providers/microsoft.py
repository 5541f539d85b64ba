"""Microsoft 365 mailboxes: OAuth consent with Microsoft's identity platform."""

from __future__ import annotations

from mailops.providers.base import register
from mailops.providers.oauth import OAuthProvider


@register
class MicrosoftProvider(OAuthProvider):
    name = "microsoft"
    has_delegates = True
    app_example = "{client_id: <application id>}"
