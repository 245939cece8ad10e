"""smoothjax._deprecation.keyword_only_shim: keyword-only parameters still accepted positionally, with a warning."""

import inspect
import warnings

import pytest

from smoothjax._deprecation import keyword_only_shim


@keyword_only_shim("dim", "sigma")
def _radius(p, l2, dual, *, dim=1, sigma, p_norm=2):
    """Docstring kept."""
    return (p, l2, dual, dim, sigma, p_norm)


def test_keywords_pass_through_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _radius(1, 2, 3, dim=4, sigma=5) == (1, 2, 3, 4, 5, 2)
        assert _radius(1, 2, dual=3, sigma=5, p_norm=1) == (1, 2, 3, 1, 5, 1)


def test_extra_positionals_map_to_the_names_in_order_and_warn():
    with pytest.warns(DeprecationWarning, match=r"dim, sigma positionally to _radius\(\)"):
        assert _radius(1, 2, 3, 4, 5) == (1, 2, 3, 4, 5, 2)
    with pytest.warns(DeprecationWarning, match="dim") as record:
        assert _radius(1, 2, 3, 4, sigma=5, p_norm=1) == (1, 2, 3, 4, 5, 1)
    assert "sigma" not in str(record[0].message)
    assert record[0].filename == __file__  # points at the caller


def test_errors_as_python_would_raise_them():
    with pytest.raises(TypeError, match="positional arguments"):
        _radius(1, 2, 3, 4, 5, 6)
    with pytest.raises(TypeError, match="multiple values for argument 'dim'"):
        _radius(1, 2, 3, 4, dim=4, sigma=5)
    with pytest.raises(TypeError):
        _radius(1, 2, 3, dim=4)  # sigma missing


def test_metadata_and_bad_declarations():
    assert _radius.__name__ == "_radius" and _radius.__doc__ == "Docstring kept."
    params = inspect.signature(_radius).parameters
    assert params["sigma"].kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError, match="not keyword-only"):
        keyword_only_shim("sigma")(lambda p, sigma: p)
    with pytest.raises(TypeError, match=r"\*args"):
        keyword_only_shim("sigma")(lambda *a, sigma: a)
    with pytest.raises(ValueError):
        keyword_only_shim()
    with pytest.raises(ValueError):
        keyword_only_shim("sigma", "sigma")
