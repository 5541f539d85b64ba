"""Google Workspace and Gmail mailboxes: OAuth consent with Google."""

from __future__ import annotations

from mailops.providers.base import register
from mailops.providers.oauth import OAuthProvider


@register
class GoogleProvider(OAuthProvider):
    name = "google"
    app_example = "{client_secrets: {file: <client JSON>}}"
