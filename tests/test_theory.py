import numpy as np
import pytest

from promptmem.theory import fit_power_law, sqrt_nN_prompt_length


def test_fit_recovers_a_power_law():
    n = np.array([100, 400, 1600, 6400])
    exponent, constant = fit_power_law(n, 3 * n ** 0.5)
    assert abs(exponent - 0.5) < 1e-9 and abs(constant - 3) < 1e-9


def test_fit_skips_missing_points_and_gives_nan_without_two():
    exponent, _ = fit_power_law([1, 2, 4, 8], [2, np.nan, 8, 16])
    assert abs(exponent - 1) < 1e-9
    assert np.isnan(fit_power_law([1, 2], [3, np.nan])[0])


def test_sqrt_nN():
    assert sqrt_nN_prompt_length(1600, 8) == np.sqrt(12800)
    assert np.allclose(sqrt_nN_prompt_length([4, 16], 1, constant=2), [4, 8])


def test_sqrt_through_passes_the_point():
    from promptmem.theory import sqrt_through

    assert np.allclose(sqrt_through([32, 128, 512], 32, 3.0), [3, 6, 12])


def test_known_values_of_the_bounds():
    from promptmem import theory

    assert theory.depth_limited_parameters(10000, 10) == 1000  # M / L_depth
    assert theory.depth_limited_parameters(10000, 1000) == 100  # depth beyond sqrt(M): sqrt(M)
    assert theory.kim_parameters(100, 4, 8) == 8 + 100 + 20
    assert theory.kajitsuka_parameters(100, 4) == 20
    assert theory.hu_memorization_lower_bound_proxy(2, 3, 0.1) == pytest.approx(6)  # log10 (1/0.1)^6
    assert theory.earlier_attention_layers_log10(2, 8, 3, 0.1) == pytest.approx(1 + 3)  # log10(10 * 10^3)
    assert theory.earlier_ffn_layers_log10(2, 8, 3, 0.1) == pytest.approx(30)
    assert theory.efficiency_threshold(np.e ** 4) == pytest.approx(2)
    assert theory.feature_rank(4, 8) == 495
    assert theory.exp_polynomial_degree(100.0, 1e-3) == 100  # large interval: degree ~ B
    small = theory.exp_polynomial_degree(0.01, 1e-9)  # small interval: log(1/delta) / log(log(1/delta) / B)
    assert small == pytest.approx(np.log(1e9) / np.log(np.log(1e9) / 0.01))


def test_bad_theory_arguments_are_refused():
    from promptmem import theory

    with pytest.raises(ValueError, match="epsilon"):
        theory.hu_memorization_lower_bound_proxy(2, 3, 1.5)
    with pytest.raises(ValueError, match="degree"):
        theory.feature_rank(3, -1)


def test_exponent_range_of_brackets_worked_by_hand():
    from promptmem.theory import power_law_exponent_range

    # p = 1 memorizes n = 400 and p = 3 fails at n = 1600: p ∝ √n would need at most 2 there
    low, high = power_law_exponent_range([400, 1600], [0, 3], [1, 4])
    assert np.isclose(low, np.log(3) / np.log(4)) and high == np.inf  # nothing failed at 400: no upper bound
    low, high = power_law_exponent_range([400, 800, 1600], [0, 1, 3], [1, 2, 4])
    assert np.isclose(low, np.log(3) / np.log(4)) and np.isclose(high, 2.0)  # 800 → 1600: 4 / 1 over a doubling
    # never memorized (NaN) bounds nothing from above; flat thresholds bound the exponent around 0
    assert power_law_exponent_range([4, 8, 16], [3, 3, 3], [4, 4, 4]) == pytest.approx(
        (-np.log(4 / 3) / np.log(4), np.log(4 / 3) / np.log(4)))
    assert power_law_exponent_range([400, 1600], [1, 3], [2, np.nan])[1] == np.inf


def test_exponent_range_contains_the_truth_and_is_empty_when_no_power_law_fits():
    from promptmem.theory import power_law_exponent_range

    n = np.array([400, 800, 1600, 2500, 3600])
    threshold = np.ceil(0.05 * n ** 0.5 * 10)  # integer thresholds of a true √n law
    low, high = power_law_exponent_range(n, threshold - 1, threshold)
    assert low < 0.5 < high and high - low < 0.5
    low, high = power_law_exponent_range([400, 1600], [3, 1], [4, 2])  # a larger n needs a shorter prompt, and less
    assert low < high < 0  # ... which a decreasing power law fits
    low, high = power_law_exponent_range([400, 800, 1600], [0, 5, 1], [1, 6, 2])  # up then down: nothing fits
    assert low >= high


def test_exponent_range_agrees_with_a_brute_force_search():
    from promptmem.theory import power_law_exponent_range

    rng = np.random.default_rng(0)
    exponents = np.linspace(-3, 3, 6001)
    for _ in range(50):
        x = np.sort(rng.choice(np.arange(2, 200), size=4, replace=False)).astype(float)
        fails = rng.integers(0, 8, size=4).astype(float)
        memorizes = fails + rng.integers(1, 4, size=4)
        low, high = power_law_exponent_range(x, fails, memorizes)
        # a power law with exponent a fits when some c clears every lower end and stays under every upper end
        fits = [np.max(fails / x ** a) < np.min(memorizes / x ** a) for a in exponents]
        inside = (exponents > low + 1e-6) & (exponents < high - 1e-6)
        outside = (exponents < low - 1e-6) | (exponents > high + 1e-6)
        assert np.all(np.array(fits)[inside]) and not np.any(np.array(fits)[outside])


def test_exponent_range_reads_a_theory_exponent_and_linear_growth():
    from promptmem.theory import ExponentRange, power_law_exponent_range

    medium = power_law_exponent_range([400, 800, 1600], [0, 1, 3], [1, 2, 4])  # (0.79, 2.00)
    assert not medium.admits(0.5) and medium.admits(1) and not medium.below(1)
    assert medium.describe() == ("every power law through the brackets has an exponent in n in (0.79, 2.00): "
                                 "excludes the theory's 0.5, admits linear growth")
    sqrt_like = ExponentRange(0.4, 1.0)  # open at 1: linear growth itself fails a bracket
    assert sqrt_like.admits(0.5) and sqrt_like.below(1) and not sqrt_like.below(0.9)
    assert "in N in (0.40, 1.00): admits the theory's 0.5, excludes linear growth" in sqrt_like.describe(variable="N")
    empty = ExponentRange(0.6, 0.6)
    assert empty.empty and not empty.admits(0.6) and not empty.below(1)
    assert empty.describe() == "no single power law passes through every bracket"


def test_log_power_range_finds_the_log_factors_of_a_true_law():
    from promptmem.theory import log_power_range

    n = np.array([400, 800, 1600, 2500, 3600])
    threshold = np.ceil(0.002 * np.sqrt(n) * np.log(n) ** 3)  # integer thresholds of c · √n · ln³ n
    low, high = log_power_range(n, threshold - 1, threshold)
    assert low < 3 < high
    low, high = log_power_range(n, 0.9 * np.sqrt(n), 1.1 * np.sqrt(n))  # a pure √n law: no log factor
    assert low < 0 < high
    assert log_power_range(n, 0.9 * n, 1.1 * n, exponent=1).admits(0)
    with pytest.raises(ValueError, match="n must be above 1"):
        log_power_range([1, 4], [0, 1], [1, 2])


def test_exponent_range_refuses_malformed_brackets():
    from promptmem.theory import power_law_exponent_range

    with pytest.raises(ValueError, match="one entry per point"):
        power_law_exponent_range([1, 2], [0], [1, 2])
    with pytest.raises(ValueError, match="fails < memorizes"):
        power_law_exponent_range([1, 2], [0, 3], [1, 2])
    with pytest.raises(ValueError, match="x must be positive"):
        power_law_exponent_range([0, 2], [0, 1], [1, 2])
