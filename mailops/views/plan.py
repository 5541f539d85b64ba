"""A plan as text, Terraform-style: the legend, one block per account that changes, the summary line."""

from __future__ import annotations

import json

from mailops.engine.plan import SENSITIVE, SYMBOLS, Action, Plan

LEGEND = (
    "mailops will perform the following actions:\n"
    "  + create    ~ update in place    - delete    ! needs a person's action\n"
)


def format_plan(plan: Plan) -> str:
    """Terraform-style text: a legend, one block per account that changes, and the summary line."""
    lines: list[str] = []
    for change in plan.changes:
        if change.action is Action.NOOP:
            continue
        head = f"  {SYMBOLS[change.action]} {change.address} ({change.provider})"
        if change.blocked:
            head += f"  BLOCKED: {change.blocked}"
        lines.append(head)
        if change.action is Action.CREATE and change.after is not None:
            for name in ("imap", "smtp"):
                server = change.after.get(name) or {}
                lines.append(f"      + {name}: {server.get('host')}:{server.get('port')} {server.get('encryption')}")
        for f in change.fields:
            before, after = (SENSITIVE, SENSITIVE) if f.sensitive else (json.dumps(f.before), json.dumps(f.after))
            lines.append(f"      ~ {f.path}: {before} -> {after}")
        if change.verify:
            lines.append("      (verify IMAP and SMTP login, send test mail)")
        if change.reason:
            lines.append(f"      {change.reason}")
    body = LEGEND + "\n" + "\n".join(lines) + "\n\n" if lines else ""
    return body + plan.summary_line()
