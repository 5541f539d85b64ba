"""Addresses: the fast path for the usual address gives exactly what email-validator gives."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic_core import PydanticCustomError

from mailops.spec.models import canonical_address

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
local_parts = st.text(alphabet=ATEXT + ".", min_size=0, max_size=70)
labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-üß", min_size=0, max_size=70)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
tricky = st.sampled_from(["", "@", "a@", "@b", "a@@b.com", 'quoted"@x.com', "a b@c.com", "Postmaster@Example.COM"])


def reference(address: str) -> str | None:
    try:
        return validate_email(address, check_deliverability=False, allow_smtputf8=False).ascii_email
    except EmailNotValidError:
        return None


def ours(address: str) -> str | None:
    canonical_address.cache_clear()
    try:
        return canonical_address(address)
    except PydanticCustomError:
        return None


@given(st.one_of(st.builds("{}@{}".format, local_parts, domains), tricky, st.text(max_size=40)))
@example("info@bücher.example")
@example("ABUSE@xn--bcher-kva.example")
@example("a" * 64 + "@" + "b" * 63 + ".com")
@example("a" * 65 + "@example.com")
@example("user@localhost")
@example("user@example.test")
@example("user@123.123")
def test_the_fast_path_agrees_with_email_validator(address: str) -> None:
    assert ours(address) == reference(address)


@pytest.mark.parametrize("address", ["a@example.com", "a.b+tag@sub.example.org", "POSTMASTER@example.com"])
def test_common_addresses_take_the_fast_path(address: str) -> None:
    from mailops.spec.models import _canonical_dot_atom

    assert _canonical_dot_atom(address) == reference(address)
