"""The account overview ("E-Mail-Konten-Übersicht"): live accounts with status and project links."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailops.errors import SpecError
from mailops.spec import load_spec
from mailops.state.accounts import LiveAccounts


def account_overview(store: LiveAccounts, config_dir: Path) -> list[dict[str, Any]]:
    """One row per live (not deleted) account. Project links come from the spec when it is valid."""
    try:
        spec = load_spec(config_dir).spec
    except SpecError:
        spec = None
    rows = []
    for state in store.accounts():
        mail = None
        if state.last_test_mail_at is not None:
            mail = {
                "at": state.last_test_mail_at,
                "to": state.last_test_mail_to,
                "ok": state.last_test_mail_error is None,
                "error": state.last_test_mail_error,
            }
        rows.append(
            {
                "address": state.address,
                "display_name": state.settings.get("display_name") or "",
                "provider": state.provider,
                "status": state.status,
                "projects": spec.projects_of(state.address) if spec else [],
                "last_verified_at": state.last_verified_at,
                "last_error_class": state.last_error_class,
                "last_error": state.last_error,
                "last_test_mail": mail,
            }
        )
    return rows
