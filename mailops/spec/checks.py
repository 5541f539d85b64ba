"""Checks that need the whole spec, and the filling of server defaults.

Each check reports through :class:`mailops.spec.loader.Report`, which locates the
problem in its file, so every message ends up as ``FILE:LINE:COL: path: message``.
"""

from __future__ import annotations

import re
from pathlib import Path

from mailops.errors import quoted
from mailops.fileio import FileReadError, MiB, NotUtf8Error, decode_utf8, read_bytes, regular_file_problem
from mailops.providers.base import provider_for
from mailops.spec.loader import ACCOUNTS_FILE, DEFAULTS_FILE, Report, SpecParts
from mailops.spec.models import TEMPLATE_VARIABLES, Account, Spec
from mailops.spec.yamldoc import FieldPath

_PLACEHOLDER = re.compile(r"\{([^{}\s]*)\}")
_ALLOWED_VARIABLES = ", ".join("{" + name + "}" for name in TEMPLATE_VARIABLES)


def check_spec(parts: SpecParts, config_dir: Path, report: Report) -> Spec | None:
    """Run every cross-check; return the complete spec, or None when anything is wrong."""
    accounts = [(index, _fill_account(index, account, report)) for index, account in parts.accounts]
    _check_duplicate_addresses(accounts, report)
    _check_references(accounts, parts, report)
    _check_template_variables(accounts, parts, report)
    _check_html_template(parts, config_dir, report)
    _check_secret_files(accounts, parts, config_dir, report)
    _check_oauth_apps(accounts, parts, report)
    _check_policies(accounts, parts, report)
    _check_autoreplies(accounts, report)
    if report.problems or parts.defaults is None:
        return None
    return Spec(
        accounts=tuple(account for _, account in accounts),
        projects=parts.projects,
        defaults=parts.defaults,
        employees=parts.employees,
        queues=tuple(parts.queues),
        oauth=parts.oauth,
        policies=parts.policies,
    )


def _fill_account(index: int, account: Account, report: Report) -> Account:
    """Complete an account as its provider says (defaults, servers), reporting what is missing."""
    path = ("accounts", index)
    completion = provider_for(account.provider).complete(account)
    for name, message, at_key in completion.problems:
        report.problem(ACCOUNTS_FILE, path + (name,), message, at_key=at_key)
    updates = completion.updates
    filled = [name for name in ("display_name", "username", "imap", "smtp") if name in updates]
    if completion.filled_from:
        report.note(ACCOUNTS_FILE, path, f"filled {', '.join(filled)} from {completion.filled_from}")
    elif "display_name" in updates:
        report.note(ACCOUNTS_FILE, path, "filled display_name from the address's local part")
    return account.model_copy(update=updates) if updates else account


def _check_duplicate_addresses(accounts: list[tuple[int, Account]], report: Report) -> None:
    first_seen: dict[str, int] = {}
    document = report.documents[ACCOUNTS_FILE]
    for index, account in accounts:
        key = account.address.lower()
        if key in first_seen:
            line, column = document.position(("accounts", first_seen[key], "address"))
            report.problem(
                ACCOUNTS_FILE,
                ("accounts", index, "address"),
                f"duplicate address `{account.address}`; already declared at {document.display_name}:{line}:{column} "
                "(addresses are compared without regard to case)",
            )
        else:
            first_seen[key] = index


def _check_references(accounts: list[tuple[int, Account]], parts: SpecParts, report: Report) -> None:
    def missing_account(file: str, path: FieldPath, address: str) -> None:
        if ACCOUNTS_FILE not in parts.unreadable_files and address.lower() not in parts.declared_addresses:
            report.problem(
                file, path, f"{quoted(address)} is not a declared account; declare it under `accounts:` first"
            )

    if parts.defaults is not None:
        missing_account(DEFAULTS_FILE, ("defaults", "email"), parts.defaults.email)
    for code, link in parts.projects.items():
        missing_account(ACCOUNTS_FILE, ("projects", code, "email"), link.email)
    defaults_known = DEFAULTS_FILE not in parts.unreadable_files
    for index, account in accounts:
        ticket = account.ticket
        if ticket.default_project is not None and ticket.default_project not in parts.declared_projects:
            report.problem(
                ACCOUNTS_FILE,
                ("accounts", index, "ticket", "default_project"),
                f"unknown project {quoted(ticket.default_project)}; declare it under `projects:`",
            )
        if defaults_known and ticket.default_queue is not None and ticket.default_queue not in parts.declared_queues:
            report.problem(
                ACCOUNTS_FILE,
                ("accounts", index, "ticket", "default_queue"),
                f"unknown queue {quoted(ticket.default_queue)}; declare it under `queues:` in {DEFAULTS_FILE}",
            )
        for position, name in enumerate(account.visible_to):
            if defaults_known and name not in parts.declared_principals:
                report.problem(
                    ACCOUNTS_FILE,
                    ("accounts", index, "visible_to", position),
                    f"{quoted(name)} is neither an employee nor a group declared under `employees:`",
                )


def _check_template_variables(accounts: list[tuple[int, Account]], parts: SpecParts, report: Report) -> None:
    texts: list[tuple[str, FieldPath, str]] = [
        (ACCOUNTS_FILE, ("accounts", index, "signature"), account.signature) for index, account in accounts
    ]
    if parts.defaults is not None:
        texts += [
            (DEFAULTS_FILE, ("defaults", "signature"), parts.defaults.signature),
            (DEFAULTS_FILE, ("defaults", "greeting"), parts.defaults.greeting),
        ]
    for file, path, text in texts:
        for name in _PLACEHOLDER.findall(text):
            if name not in TEMPLATE_VARIABLES:
                report.problem(file, path, f"unknown variable {{{name}}}; allowed are {_ALLOWED_VARIABLES}")


MAX_TEMPLATE_BYTES = 1 * MiB


def _check_html_template(parts: SpecParts, config_dir: Path, report: Report) -> None:
    if parts.defaults is None or parts.defaults.html_template is None:
        return
    relative = parts.defaults.html_template
    path = ("defaults", "html_template")
    try:
        text = decode_utf8(read_bytes(config_dir / relative, limit=MAX_TEMPLATE_BYTES, what="template"))
    except FileReadError as exc:
        if exc.missing:
            report.problem(
                DEFAULTS_FILE, path, f"template file `{relative}` not found (paths are relative to the config dir)"
            )
        else:
            report.problem(DEFAULTS_FILE, path, str(exc).replace(str(config_dir / relative), f"`{relative}`"))
        return
    except NotUtf8Error as exc:
        report.problem(DEFAULTS_FILE, path, f"{relative}:{exc.line}:{exc.column}: {exc}")
        return
    from mailops.spec.htmltemplate import check_html_template  # here: HTML's parser only for a template

    for problem in check_html_template(text):
        where = f"{relative}:{problem}" if problem[:1].isdigit() else f"{relative} {problem}"
        report.problem(DEFAULTS_FILE, path, where)


def _check_secret_files(
    accounts: list[tuple[int, Account]], parts: SpecParts, config_dir: Path, report: Report
) -> None:
    references: list[tuple[str, FieldPath, str]] = [
        (ACCOUNTS_FILE, ("accounts", index, "password", "file"), account.password.file)
        for index, account in accounts
        if account.password is not None and account.password.file is not None
    ]
    google = parts.oauth.google
    if google is not None and google.client_secrets.file is not None:
        references.append((DEFAULTS_FILE, ("oauth", "google", "client_secrets", "file"), google.client_secrets.file))
    for file, path, relative in references:
        problem = regular_file_problem(config_dir / relative)
        if problem is not None:
            hint = " (paths are relative to the config dir)" if problem == "not found" else ""
            report.problem(file, path, f"secret file `{relative}` {problem}{hint}")


def _check_oauth_apps(accounts: list[tuple[int, Account]], parts: SpecParts, report: Report) -> None:
    """An OAuth account needs its provider's app in defaults.yaml (unless that part is broken or unread)."""
    if DEFAULTS_FILE in parts.unreadable_files:
        return
    for index, account in accounts:
        provider = provider_for(account.provider)
        if report.is_broken(DEFAULTS_FILE, ("oauth", account.provider)):
            continue
        problem = provider.missing_setup(parts.oauth)
        if problem is not None:
            report.problem(ACCOUNTS_FILE, ("accounts", index, "provider"), problem)


def _check_policies(accounts: list[tuple[int, Account]], parts: SpecParts, report: Report) -> None:
    if not parts.policies.require_encryption:
        return
    for index, account in accounts:
        for name in ("imap", "smtp"):
            server = getattr(account, name)
            if server is not None and server.encryption == "none":
                report.problem(
                    ACCOUNTS_FILE,
                    ("accounts", index, name, "encryption"),
                    "`none` is refused by policies.require_encryption; use ssl or starttls",
                )


def _check_autoreplies(accounts: list[tuple[int, Account]], report: Report) -> None:
    for index, account in accounts:
        if not account.autoreply.enabled:
            continue
        for name in ("subject", "body"):
            if not getattr(account.autoreply, name).strip():
                report.problem(
                    ACCOUNTS_FILE, ("accounts", index, "autoreply", name), "required when the auto-reply is enabled"
                )
