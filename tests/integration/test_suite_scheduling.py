"""The suite's own scheduling (tests/conftest.py): the scopes it runs first exist, and run first."""

import pathlib

from tests.conftest import LONGEST_SCOPES_FIRST, _scopes

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_scope_run_first_names_a_test_module_or_class():
    for scope in LONGEST_SCOPES_FIRST:
        path, _, class_name = scope.partition("::")
        assert (ROOT / path).is_file(), scope
        assert not class_name or f"\nclass {class_name}" in (ROOT / path).read_text(), scope


def test_the_collection_starts_with_the_longest_scopes(request):
    order = list(dict.fromkeys(_scopes(item.nodeid)[0] for item in request.session.items))
    collected = [scope for scope in LONGEST_SCOPES_FIRST if scope in order]  # all of them in a full run
    assert order[:len(collected)] == collected
