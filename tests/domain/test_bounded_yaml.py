import pytest
import yaml

from gateway.domain.bounded_yaml import MAX_DEPTH, compose, safe_load


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_collections_nested_to_the_bound_are_read_as_pyyaml_reads_them():
    text = nested(MAX_DEPTH)
    assert safe_load(text) == yaml.safe_load(text)
    tree = "a: [1, {b: 2}]"
    assert yaml.serialize(compose(tree)) == yaml.serialize(yaml.compose(tree))


@pytest.mark.parametrize(
    "text",
    [
        nested(MAX_DEPTH + 1),
        # Thousands deep ran PyYAML's composer (one call a few frames a level) out of stack.
        "[" * 5000,
        "- " * 5000,
        "".join("  " * depth + "a:\n" for depth in range(3000)),
    ],
)
def test_deeper_is_a_yaml_error_saying_so_with_its_line(text):
    with pytest.raises(yaml.YAMLError, match=f"nested more than {MAX_DEPTH} levels deep") as caught:
        safe_load(text)
    assert caught.value.problem_mark is not None
    with pytest.raises(yaml.YAMLError):
        compose(text)
