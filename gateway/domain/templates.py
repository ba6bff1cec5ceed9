"""Notification templates: Jinja2 in a sandbox, every variable required.

Templates are written by operators and filled with data from orders and dispatchers, so they
render in a SandboxedEnvironment (no reaching into Python objects) with StrictUndefined (a missing
variable is an error, never an empty gap in a customer's text). The shell reads the files; this
module only sees their text.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

SUFFIX = ".txt.j2"


class TemplateError(ValueError):
    """A template that cannot be rendered; the message names the template and the line."""

    def __init__(
        self, template: str, line: int | None, problem: str, missing: str | None = None
    ) -> None:
        where = f"{template}{SUFFIX}" + (f", line {line}" if line else "")
        super().__init__(f"template {where}: {problem}")
        self.template = template
        self.line = line
        self.problem = problem
        # The variable the template needed and was not given: each face says how to give it
        # (the command line's --var, the API's variables, a field in the dashboard).
        self.missing = missing


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    name: str
    variables: frozenset[str]


# Jinja reads an expression or block inside another by calling itself, and the Python it writes
# for them nests as deep: about a hundred levels run out of stack (or indentation) in one or the
# other, which a template's author should hear as a mistake in the template, not a traceback.
TOO_DEEP = "nested too deeply to read (parentheses, brackets or blocks inside one another)"


class TemplateBook:
    """The templates by name (`order_confirmed` for `order_confirmed.txt.j2`)."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self._sources = dict(sources)
        self._env = SandboxedEnvironment(
            loader=jinja2.FunctionLoader(self._load),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # plain text for SMS, never HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
        )

    def _load(self, name: str) -> tuple[str, str, None] | None:
        source = self._sources.get(name)
        # The filename shows in tracebacks, which is how a render error finds its line.
        return None if source is None else (source, name + SUFFIX, None)

    def names(self) -> list[str]:
        return sorted(self._sources)

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def info(self, name: str) -> TemplateInfo:
        """The template's variables; raises TemplateError where it does not compile (a syntax
        error, or blocks nested past what Python's compiler takes)."""
        self._compile(name)
        parsed = self._env.parse(self._source(name), name, name + SUFFIX)
        return TemplateInfo(name, frozenset(meta.find_undeclared_variables(parsed)))

    def check(self) -> list[TemplateError]:
        problems = []
        for name in self.names():
            try:
                self._compile(name)
            except TemplateError as exc:
                problems.append(exc)
        return problems

    def render(self, name: str, variables: Mapping[str, object]) -> str:
        template = self._compile(name)
        try:
            return template.render(variables).strip()
        except jinja2.UndefinedError as exc:
            missing = _missing(exc)
            problem = f"variable '{missing}' is missing" if missing else str(exc.message)
            line = _template_line(exc.__traceback__, name)
            raise TemplateError(name, line, problem or "a variable is missing", missing) from None
        except jinja2.TemplateError as exc:
            line = _template_line(exc.__traceback__, name)
            raise TemplateError(name, line, str(exc) or type(exc).__name__) from None
        except (ArithmeticError, TypeError, ValueError, LookupError) as exc:
            line = _template_line(exc.__traceback__, name)
            raise TemplateError(name, line, f"{type(exc).__name__}: {exc}") from None

    def _source(self, name: str) -> str:
        if name not in self._sources:
            known = ", ".join(self.names()) or "none"
            raise TemplateError(name, None, f"no such template (known: {known})")
        return self._sources[name]

    def _compile(self, name: str) -> jinja2.Template:
        self._source(name)
        try:
            return self._env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(name, exc.lineno, exc.message or "syntax error") from None
        except (RecursionError, SyntaxError):
            # Python's own compiler refuses the code Jinja writes for blocks nested about a
            # hundred deep ("too many levels of indentation"): to the author, the same fault.
            raise TemplateError(name, None, TOO_DEEP) from None


def _missing(exc: jinja2.UndefinedError) -> str | None:
    """The variable Jinja could not find ("'eta' is undefined"), or None."""
    found = re.fullmatch(r"'(\w+)' is undefined", exc.message or "")
    return found.group(1) if found else None


def _template_line(tb: types.TracebackType | None, name: str) -> int | None:
    line = None
    filename = name + SUFFIX
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
