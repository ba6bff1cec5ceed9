from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.templates import SUFFIX, TemplateBook, TemplateError

SHIPPED = Path(__file__).resolve().parents[2] / "templates"


def shipped() -> TemplateBook:
    return TemplateBook({p.name[: -len(SUFFIX)]: p.read_text() for p in SHIPPED.glob("*" + SUFFIX)})


def test_shipped_templates_compile_and_cover_every_order_status():
    book = shipped()
    assert book.check() == []
    for status in [
        "order_confirmed",
        "driver_assigned",
        "out_for_delivery",
        "delivered",
        "delayed",
        "attempt_failed",
        "cancelled",
        "free_text",
    ]:
        assert status in book


def test_renders_with_optional_parts():
    book = shipped()
    text = book.render("delayed", {"customer_name": "Ana", "order_ref": "A-1", "eta": "15:00"})
    assert text == "Sorry Ana, your order A-1 is running late. New ETA 15:00."
    with_reason = book.render(
        "delayed", {"customer_name": "Ana", "order_ref": "A-1", "eta": "15:00", "reason": "snow"}
    )
    assert with_reason.endswith("(snow)")


def test_missing_variable_names_template_and_line():
    book = TemplateBook({"t": "Hello {{ name }}\nETA {{ eta }}"})
    with pytest.raises(TemplateError) as caught:
        book.render("t", {"name": "Ana"})
    assert caught.value.line == 2 and caught.value.missing == "eta"
    # The same words everywhere; each face says how to give it (--var, variables, a field).
    assert str(caught.value) == "template t.txt.j2, line 2: variable 'eta' is missing"


def test_syntax_error_names_template_and_line():
    book = TemplateBook({"bad": "ok\n{% if %}\n"})
    problems = book.check()
    assert len(problems) == 1 and problems[0].line == 2 and "bad.txt.j2" in str(problems[0])


@pytest.mark.parametrize(
    "source",
    [
        "{{ x.__class__.__mro__ }}",
        "{{ x.__init__.__globals__ }}",
        "{{ ''.__class__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_sandbox_refuses_reaching_into_python(source):
    with pytest.raises(TemplateError):
        TemplateBook({"evil": source}).render("evil", {"x": 1})


def test_hostile_variables_are_text_not_code():
    book = TemplateBook({"t": "Hi {{ name }}"})
    assert book.render("t", {"name": "{{ 7*7 }}"}) == "Hi {{ 7*7 }}"


def test_unknown_template_lists_the_known_ones():
    with pytest.raises(TemplateError, match="known: t"):
        TemplateBook({"t": "x"}).render("nope", {})


def test_variables_are_reported():
    assert shipped().info("out_for_delivery").variables == {
        "customer_name",
        "order_ref",
        "driver_name",
        "eta",
    }


# --- hostile variables ------------------------------------------------------------------------

HOSTILE = st.one_of(
    st.text(max_size=300),
    st.sampled_from([
        "{{ 7 * 7 }}", "{% for x in range(10**9) %}x{% endfor %}", "{{ ''.__class__.__mro__ }}",
        "{{ self.__init__.__globals__ }}", "\r\nBcc: x@y.example", "\x00\x1b[31m", "🚚" * 100,
        "</script><script>alert(1)</script>", "{#", "{%", "}}", "%s%s%s%n", "\\u0000",
    ]),
)  # fmt: skip


@given(name=HOSTILE, ref=HOSTILE, driver=HOSTILE, eta=HOSTILE)
def test_hostile_variables_are_text_never_template_code(name, ref, driver, eta):
    """Whatever a variable holds (Jinja syntax, attribute walks, control characters), it is
    put in as text: never evaluated, never an exception other than TemplateError."""
    variables = {"customer_name": name, "order_ref": ref, "driver_name": driver, "eta": eta}
    text = BOOK.render("out_for_delivery", variables)
    for value in variables.values():
        assert value in text  # as given, not rendered again
    assert "49" not in text or "49" in "".join(variables.values())


@given(st.text(max_size=400))
def test_a_hostile_template_source_is_refused_or_rendered_in_the_sandbox(source):
    try:
        book = TemplateBook({"typed": source})
        book.render("typed", {})
    except TemplateError as exc:
        assert str(exc)  # refused with a reason


# Jinja reads an expression or block inside another by calling itself, and the Python it writes
# nests as deep: a hundred levels ran out of stack or indentation (a traceback, and a 500 from the
# dashboard's quick replies, which check a typed template with info()).
@pytest.mark.parametrize(
    "source",
    ["{{ " + "(" * 100 + "x" + ")" * 100 + " }}", "{{ " + "[" * 3000 + " }}",
     "{% if x %}" * 100 + "y" + "{% endif %}" * 100, "{% if x %}" * 3000],
)  # fmt: skip
def test_a_template_nested_too_deeply_is_refused_saying_so(source):
    book = TemplateBook({"deep": source})
    for read in (lambda: book.info("deep"), lambda: book.render("deep", {"x": 1})):
        with pytest.raises(TemplateError, match="nested too deeply"):
            read()
    assert [str(problem) for problem in book.check()] == [
        "template deep.txt.j2: nested too deeply to read (parentheses, brackets or blocks "
        "inside one another)"
    ]


@pytest.mark.parametrize(
    "source",
    ["{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ cycler.__init__.__globals__ }}",
     "{{ self._TemplateReference__context }}", "{{ range(10**10) | list }}"],
)  # fmt: skip
def test_sandbox_escapes_are_refused_with_the_template_named(source):
    with pytest.raises(TemplateError, match="typed"):
        TemplateBook({"typed": source}).render("typed", {})


BOOK = shipped()
