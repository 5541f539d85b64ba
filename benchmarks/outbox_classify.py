"""Classifying an outbox log of 1,000,000 rows: vectorised `classify_frame` vs. a per-row Python loop.

The log is generated in the run (fixed seed, not timed): 90 % sent mails (no error) and
10 % failures in a realistic mix of PHPMailer's messages as the seed system logs them,
every error text with a unique address in it and the SMTP codes inside the text, as in an
imported log (no `smtp_code`/`enhanced_code` columns, so both paths extract them). The
error column is pandas' default string column (pyarrow-backed in pandas 3), as
`read_seed_log` returns it.

Measured, each from the same frame and each producing the same categorical Series:
(a) `mailops.outbox.classify.classify_frame(frame)`: pandas string methods in RE2;
(b) a per-row Python loop over `frame["error"].tolist()` that applies the same compiled
    patterns, in the same precedence, with `re` (code extraction included), and builds
    the same categorical Series.
Nothing is cached between runs: every run classifies the whole frame again. Both results
are checked to be equal (not timed). The figure of each is the median of --runs runs.

Targets: (a) at most 1.5 s for 1,000,000 rows; (a) at least 6x faster than (b).
Run: .venv/bin/python benchmarks/outbox_classify.py [--rows N] [--runs N]
Exit code 0 when both targets are met, 1 when one is missed, 2 when the results differ.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailops.outbox.classify import (  # noqa: E402
    CLASSES,
    CODE_PATTERN,
    CONTENT_PATTERN,
    ENHANCED_PATTERN,
    TABLE,
    UNKNOWN,
    classify_frame,
)

TARGET_SECONDS = 1.5  # for (a) at 1,000,000 rows
TARGET_SPEEDUP = 6.0
FAILED_SHARE = 0.10

# (weight, template): {a} is a unique address, {n} a running number.
FAILURES: list[tuple[int, str]] = [
    (
        18,
        "SMTP Error: The following recipients failed: {a}: <{a}>: Recipient address rejected: User unknown in "
        "virtual mailbox tableSMTP server error: RCPT TO command failed Detail: <{a}>: Recipient address rejected: "
        "User unknown in virtual mailbox table SMTP code: 550 Additional SMTP info: 5.1.1",
    ),
    (10, "SMTP Error: The following recipients failed: {a}: 550 5.1.1 <{a}>: Recipient address rejected: User unknown"),
    (3, "SMTP Error: The following recipients failed: {a}: 550 Requested action not taken: mailbox unavailable"),
    (
        7,
        "SMTP Error: The following recipients failed: {a}: 452 4.2.2 The email account that you tried to reach is "
        "over quota.",
    ),
    (4, "SMTP Error: The following recipients failed: {a}: 552 5.3.4 Message size exceeds fixed maximum message size"),
    (
        6,
        "SMTP Error: data not accepted.SMTP server error: DATA END command failed Detail: Message to {a} rejected "
        "as spam SMTP code: 554 Additional SMTP info: 5.7.1",
    ),
    (
        4,
        "SMTP Error: The following recipients failed: {a}: 550 5.7.1 Service unavailable; Client host "
        "[203.0.113.7] blocked using zen.spamhaus.org",
    ),
    (5, "SMTP Error: The following recipients failed: {a}: 421 4.7.0 Try again later, closing connection."),
    (3, "SMTP Error: The following recipients failed: {a}: 451 4.7.1 Greylisted, please try again in 300 seconds"),
    (
        9,
        "SMTP Error: Could not authenticate.SMTP server error: AUTH command failed Detail: Authentication failed "
        "for {a} SMTP code: 535 Additional SMTP info: 5.7.8",
    ),
    (
        2,
        "SMTP Error: Could not authenticate.SMTP server error: AUTH command failed Detail: 5.7.139 Authentication "
        "unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled "
        "for more information. [{a}] SMTP code: 535",
    ),
    (
        6,
        "The following From address failed: {a} : MAIL FROM command failed,Sender address rejected: not owned by "
        "user {a},553,5.1.8",
    ),
    (6, "SMTP Error: Could not connect to SMTP host. Failed to connect to server (sending as {a})"),
    (
        3,
        "SMTP Error: Could not connect to SMTP host. Connection failed. stream_socket_client(): Unable to connect "
        "to ssl://smtp.example.com:465 (Connection timed out) (sending as {a})",
    ),
    (
        3,
        "SMTP Error: Could not connect to SMTP host. Connection failed. stream_socket_enable_crypto(): SSL "
        "operation failed with code 1. OpenSSL Error messages: error:0A000086:SSL routines::certificate verify "
        "failed (sending as {a})",
    ),
    (
        3,
        "SMTP Error: data not accepted.SMTP server error: DATA END command failed Detail: Message for {a} could "
        "not be queued SMTP code: 550",
    ),
    (2, "Could not access file: /var/www/userdata/dms/{a}/Rechnung_{n}.pdf"),
    (1, "File Error: Could not open file: /tmp/{a}-Lieferschein_{n}.pdf"),
    (2, "You must provide at least one recipient email address. (sender {a})"),
    (1, "Could not instantiate mail function. (sender {a})"),
    (1, "Signing Error: error:1E08010C:DECODER routines::unsupported (certificate of {a})"),
    (1, "Invalid address:  (to): {a}.invalid>"),
]
NAMES = ["kunde", "info", "buchhaltung", "einkauf", "m.mueller", "anna.schmidt", "service", "j.weber"]
DOMAINS = ["example.org", "example.com", "beispiel.de", "kunde-gmbh.de", "mail.example.net"]


def generate(rows: int, seed: int = 1) -> pd.DataFrame:
    """An outbox log of ``rows`` mails: time, to, subject and error (None for a sent mail)."""
    rng = random.Random(seed)
    weights = [weight for weight, _ in FAILURES]
    templates = [template for _, template in FAILURES]
    errors: list[str | None] = []
    recipients: list[str] = []
    for n in range(rows):
        address = f"{rng.choice(NAMES)}{n}@{rng.choice(DOMAINS)}"
        recipients.append(address)
        if rng.random() < FAILED_SHARE:
            template = rng.choices(templates, weights)[0]
            errors.append(template.format(a=address, n=n))
        else:
            errors.append(None)
    return pd.DataFrame(
        {
            "time": pd.date_range("2026-01-01", periods=rows, freq="s", tz="UTC"),
            "to": recipients,
            "subject": [f"Rechnung {n}" for n in range(rows)],
            "error": errors,
        }
    )


def classify_rows(errors: pd.Series) -> pd.Series:
    """The per-row reference: the table's compiled patterns applied with `re`, one row after another."""
    rules = [stage for stage in TABLE.stages if stage is not None]  # no `failure` column: no hint stage
    result: list[str | None] = []
    for text in errors.tolist():
        if not isinstance(text, str) or CONTENT_PATTERN.search(text) is None:
            result.append(None)
            continue
        found = CODE_PATTERN.search(text)
        code = int(next(group for group in found.groups() if group)) if found else 0
        found = ENHANCED_PATTERN.search(text)
        enhanced = found.group("e") if found else None
        for rule in rules:
            if (
                (rule.text is not None and rule.text.search(text))
                or (enhanced is not None and rule.enhanced is not None and rule.enhanced.search(enhanced))
                or (code in rule.smtp and (rule.smtp_text is None or rule.smtp_text.search(text)))
            ):
                result.append(rule.name)
                break
        else:
            result.append(UNKNOWN)
    return pd.Series(pd.Categorical(result, categories=list(CLASSES)), index=errors.index, name="class")


def timed(function: Callable[[], pd.Series], runs: int) -> tuple[float, list[float], pd.Series]:
    seconds: list[float] = []
    result = pd.Series(dtype="category")
    for _ in range(runs):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), seconds, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    started = time.perf_counter()
    frame = generate(arguments.rows)
    failed = int(frame["error"].notna().sum())
    print(
        f"{arguments.rows:,} rows ({failed:,} failed, error column {frame['error'].dtype!r}), "
        f"generated in {time.perf_counter() - started:.1f} s (not timed)",
        flush=True,
    )
    vector, vector_runs, vector_result = timed(lambda: classify_frame(frame), arguments.runs)
    print(f"(a) classify_frame:   {vector:.3f} s (runs: {', '.join(f'{s:.3f}' for s in vector_runs)})", flush=True)
    loop, loop_runs, loop_result = timed(lambda: classify_rows(frame["error"]), arguments.runs)
    print(f"(b) per-row re loop:  {loop:.3f} s (runs: {', '.join(f'{s:.3f}' for s in loop_runs)})", flush=True)
    if not vector_result.equals(loop_result):
        differ = vector_result.astype(object).ne(loop_result.astype(object)) & ~(
            vector_result.isna() & loop_result.isna()
        )
        print(f"the two results differ in {int(differ.sum())} rows, e.g.:", file=sys.stderr)
        for index in differ[differ].index[:5]:
            print(f"  {vector_result[index]} vs {loop_result[index]}: {frame['error'][index]!r}", file=sys.stderr)
        return 2
    print("class counts:", ", ".join(f"{name} {count}" for name, count in vector_result.value_counts().items()))
    limit = TARGET_SECONDS * arguments.rows / 1_000_000
    speedup = loop / vector
    fast = vector <= limit
    ahead = speedup >= TARGET_SPEEDUP
    print(f"(a) {vector:.3f} s, target <= {limit:.2f} s: {'meets' if fast else 'MISSES'}")
    print(f"speed-up (b)/(a) {speedup:.1f}x, target >= {TARGET_SPEEDUP:.0f}x: {'meets' if ahead else 'MISSES'}")
    return 0 if fast and ahead else 1


if __name__ == "__main__":
    sys.exit(main())
