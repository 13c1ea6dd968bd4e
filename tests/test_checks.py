"""checks: the one registry lookup and the one image-shape check."""

import pytest

from vaekit.checks import image_shape, lookup, shown
from vaekit.errors import ConfigError

REGISTRY = {"bernoulli": 1, "gaussian": 2, "logistic_mixture": 3}


def test_lookup_returns_the_entry():
    assert lookup(REGISTRY, "gaussian", "likelihood") == 2


def test_lookup_names_what_suggests_the_closest_and_lists_all():
    with pytest.raises(ConfigError) as e:
        lookup(REGISTRY, "gausian", "likelihood")
    msg = str(e.value)
    assert msg.startswith("unknown likelihood 'gausian'")
    assert "(did you mean 'gaussian'?)" in msg
    assert msg.endswith("known: bernoulli, gaussian, logistic_mixture")


def test_lookup_of_a_non_string_or_unprintable_name_is_one_clean_line():
    with pytest.raises(ConfigError, match="unknown prior '3'"):
        lookup(REGISTRY, 3, "prior")
    with pytest.raises(ConfigError) as e:
        lookup(REGISTRY, "a\nb", "prior")
    assert "\n" not in str(e.value) and "a\\nb" in str(e.value)


def test_shown_escapes_only_unprintable_text():
    assert shown("plain") == "plain"
    assert shown("tab\there") == "tab\\there"


def test_image_shape_accepts_chw_and_names_the_user_otherwise():
    assert image_shape((3, 32, 32), "conv encoder") == (3, 32, 32)
    with pytest.raises(ConfigError, match=r"conv encoder needs image data \[C, H, W\]; got shape \(784,\)"):
        image_shape((784,), "conv encoder")
