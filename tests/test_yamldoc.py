"""The spec's YAML loader reads what a standard YAML 1.2 loader reads, and leaves libyaml as it found it."""

from __future__ import annotations

import io
import threading
from typing import Any

import _ruamel_yaml
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML, events

from mailops.spec.yamldoc import YamlProblem, parse_yaml

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Co", "Cn")), max_size=30)
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text
_keys = _text | st.integers()
_data = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=25,
)


def _dumped(data: Any, flow: bool | None) -> str:
    yaml = YAML(typ="safe")
    yaml.default_flow_style = flow
    yaml.width = 4096
    out = io.StringIO()
    yaml.dump({"root": data}, out)
    return out.getvalue()


@given(data=_data, flow=st.sampled_from([None, True, False]))
@settings(max_examples=150)
def test_parse_yaml_reads_what_ruamel_reads(data: Any, flow: bool | None) -> None:
    text = _dumped(data, flow)
    assert parse_yaml(text) == YAML(typ="safe", pure=True).load(text) == {"root": data}


def _event_classes() -> dict[str, Any]:
    return {name: getattr(_ruamel_yaml, name) for name in dir(_ruamel_yaml) if name.endswith("Event")}


def test_libyaml_makes_ruamels_events_again_after_a_parse_and_after_a_refusal() -> None:
    before = _event_classes()
    assert before["ScalarEvent"] is events.ScalarEvent
    parse_yaml("a: [1, {b: c}]\n")
    with pytest.raises(YamlProblem):
        parse_yaml("a: *nowhere\n")
    with pytest.raises(YamlProblem):
        parse_yaml("a: [unclosed\n")
    assert _event_classes() == before
    # ruamel's own C loader, which makes its events through the same names, still works.
    assert YAML(typ="safe", pure=False).load("a: [1, {b: c}]\n") == {"a": [1, {"b": "c"}]}


def test_parses_in_several_threads_at_once_each_get_their_own_data() -> None:
    texts = [f"items: [{', '.join(str(n * 1000 + i) for i in range(2000))}]\n" for n in range(4)]
    results: dict[int, Any] = {}

    def parse(n: int) -> None:
        results[n] = parse_yaml(texts[n])

    threads = [threading.Thread(target=parse, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: {"items": [n * 1000 + i for i in range(2000)]} for n in range(4)}
    assert _event_classes()["ScalarEvent"] is events.ScalarEvent
