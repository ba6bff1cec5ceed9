"""The fuzz corpus, replayed: every input the coverage-guided exploration (`make fuzz`, atheris)
kept because it reached new code, and every input that ever crashed a parser, is fed again to
the parsers that take strangers' input: inbound mail, phone numbers, SMS text shaping, and every
field that reaches an email header. A crash (any exception but a rejection with a reason) fails
the test, naming the file.

The replay runs in process, needs no fuzzer, and runs the same inputs on every machine: a fuzz
run whose exploration depends on the machine's speed made CI fail at random. Exploration is
`make fuzz` (FUZZ_SECONDS per target); what it keeps lands in tests/data/fuzz/TARGET/, what
crashes in tests/data/fuzz/crashers/TARGET/, and both are committed with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.fuzz_targets import TARGETS

FUZZ = Path(__file__).resolve().parents[1] / "data" / "fuzz"


def _inputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_replays_without_a_crash(target: str) -> None:
    corpus = _inputs(FUZZ / target)
    crashers = _inputs(FUZZ / "crashers" / target)
    # A replay of nothing would pass whatever the parsers do.
    assert len(corpus) >= 20, f"the saved corpus for {target} is missing; run `make fuzz`"
    for path in corpus + crashers:
        try:
            TARGETS[target](path.read_bytes())
        except Exception as exc:
            where = path.relative_to(FUZZ)
            raise AssertionError(f"{where} crashes {target}: {type(exc).__name__}: {exc}") from exc


def test_every_past_crasher_is_kept() -> None:
    """The crashes CI once met stay in the replay (each also has a test of its own beside the
    code it broke)."""
    kept = {p.name for p in _inputs(FUZZ / "crashers" / "inbound_mail")}
    assert "nul-in-charset-name" in kept  # ValueError: embedded null character (get_payload)
    # HeaderParseError: a vertical tab splits a header when the message is written back out
    # (found by `make fuzz`, 2026-12-07).
    assert "vertical-tab-in-header" in kept
    # UnicodeEncodeError: the email package's getters on text holding escaped bytes beside
    # characters beyond ASCII (found by `make fuzz`, 2026-12-07).
    assert "escaped-bytes-beside-wider-characters" in kept
    # ValueError: a NUL in a charset name, met again where the message is written back out to
    # mend an indented delimiter (found by `make fuzz`, 2026-12-07, seed 4242).
    assert "nul-in-charset-when-written-back" in kept
    # TypeError: an RFC 2231 parameter given both whole and in numbered pieces, which the email
    # package cannot order, met by every getter of that header (`make fuzz`, 2026-12-07, seed
    # 4711).
    assert "extended-parameter-whole-and-in-pieces" in kept
    # RecursionError: an address header opening some 580 comments, which the email package's
    # address parser reads one call a level (`make fuzz`, 2026-12-07, seed 27182).
    assert "comments-nested-hundreds-deep" in kept
    # RecursionError again, a typed address opening hundreds of groups ("a: b: c: ..."), which
    # the same parser reads one call a level too (`make fuzz`, 2026-12-07, seed 27182).
    assert "address-groups-nested-hundreds-deep" in {
        p.name for p in _inputs(FUZZ / "crashers" / "email_headers")
    }
    # RecursionError in the email package's own parser, which nests a part in a part one call
    # a level: a stranger's message nesting thousands, and a report whose body does (parsed
    # again from its delimiters), found looking for the same class of crash (2026-12-07).
    assert {"mime-parts-nested-thousands-deep", "report-body-nesting-thousands-deep"} <= kept
    # RecursionError in PyYAML's composer, a list in a list a few calls a level: the operator's
    # files nested thousands deep (flow and block style), found looking for the same class of
    # crash as the two above (2026-12-07).
    for target in ("rules_file", "carriers_file"):
        assert "yaml-nested-thousands-deep" in {p.name for p in _inputs(FUZZ / "crashers" / target)}
