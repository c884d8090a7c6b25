"""changed_signature: old keyword names and positional options keep working, with a DeprecationWarning."""

from __future__ import annotations

import warnings

import pytest

from trajgeo._api import changed_signature


@changed_signature(renamed={"by": "word"}, positional=("labels", "word"))
def _curves(traj, *, labels="sense", word="word"):
    return traj, labels, word


def test_new_form_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _curves(1, labels="s", word="w") == (1, "s", "w")


def test_renamed_keyword_is_passed_on_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="'by' is deprecated.*use 'word'"):
        assert _curves(1, by="lemma") == (1, "sense", "lemma")


def test_positional_options_map_to_their_old_order():
    with pytest.warns(DeprecationWarning, match="by position"):
        assert _curves(1, "s", "w") == (1, "s", "w")


def test_conflicting_or_surplus_arguments_are_type_errors():
    with pytest.raises(TypeError, match="both 'by'"):
        _curves(1, by="a", word="b")
    with pytest.raises(TypeError, match="multiple values"), pytest.warns(DeprecationWarning):
        _curves(1, "s", labels="t")
    with pytest.raises(TypeError, match="positional"):
        _curves(1, "s", "w", "extra")
