"""The portal's edges with generated inputs: whatever a label or an output line holds, the page
made from it shows it as text and the stream carries it unchanged; whatever the run form is sent,
it is read as an order or refused with a clear reason, never a server error."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from hypothesis import given
from hypothesis import strategies as st

from tentacle_poll.exceptions import ProtocolError
from tentacle_poll.protocol.models import Event
from tentacle_poll.server.portal.output import _batch
from tentacle_poll.server.portal.rendering import TEMPLATES
from tentacle_poll.server.portal.running import FIELDS, order_from

HOSTILE = st.one_of(
    st.text(max_size=60),
    st.sampled_from(['<script>alert(1)</script>', '"><img src=x onerror=alert(2)>',
                     "</td></tr></table><b>", "&amp;", "{{ 7*7 }}", "\r\n\u2028\x00"]),
)  # fmt: skip


class Elements(HTMLParser):
    """The elements of a page and its text, as a browser's parser would find them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text += data


def parsed(html: str) -> Elements:
    elements = Elements()
    elements.feed(html)
    return elements


def fleet_page(row: dict[str, object]) -> str:
    return TEMPLATES.get_template("fleet.html").render(
        targets=[row], filters={}, following=None, query_string="", may_run=False
    )


@given(label=HOSTILE)
def test_a_label_is_shown_as_the_text_it_is_whatever_it_holds(label: str) -> None:
    plain = {
        "name": "web1", "environments": "Test", "roles": "web", "tenants": "", "connected": True,
        "version": "1", "last_seen": "never", "health": "healthy",
    }  # fmt: skip
    baseline = parsed(fleet_page(plain)).tags
    shown = parsed(fleet_page({**plain, "roles": label, "tenants": label}))
    assert shown.tags == baseline, "a label became markup"
    assert label in shown.text


# What a stored line can hold: any character but a newline (and no lone surrogate: output is
# decoded UTF-8).
LINE_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n"), max_size=80)


@given(texts=st.lists(LINE_TEXT, min_size=1, max_size=20), continues=st.booleans())
def test_a_batch_of_lines_reaches_the_page_unchanged(texts: list[str], continues: bool) -> None:
    lines = [Event(seq=i + 1, stream="stdout", text=t, ts=0.0, continues=continues and i == 0)
             for i, t in enumerate(texts)]  # fmt: skip
    data = _batch(lines)
    # An SSE data field ends at any CR or LF: the batch must hold none, or the page loses lines.
    assert "\r" not in data and "\n" not in data
    assert json.loads(data) == [[e.seq, e.stream, e.text, e.continues] for e in lines]


@given(values=st.fixed_dictionaries({name: HOSTILE for name in FIELDS}))
def test_whatever_the_run_form_is_sent_it_is_an_order_or_a_clear_refusal(
    values: dict[str, str],
) -> None:
    try:
        order = order_from(values)
    except ProtocolError as refused:
        assert str(refused), "a refusal says why"
        return
    assert bool(order.target) != bool(order.environment)
    assert order.task.kind in ("script", "deploy")
    if order.task.script is not None:
        assert "\r\n" not in order.task.script.body
