"""eval.equal_l0 against curves with a known value at every L0 (linear in log L0)."""

import numpy as np
import pandas as pd
import pytest

from gemmascope.eval import equal_l0


def _row(sae, arch, l0, fvu, delta, source="trained", site="resid_post/1", width=256):
    return dict(sae=sae, site=site, width=width, architecture=arch, source=source, l0=l0,
                fvu=fvu, delta_loss=delta)  # fmt: skip


def _gated_fvu(l0):
    return 0.5 - 0.1 * np.log(l0)  # exactly linear in log L0: interpolation is exact


def _frame():
    rows = [
        _row(f"g{l0}", "gated", l0, _gated_fvu(l0), 0.2 - 0.04 * np.log(l0)) for l0 in (4, 16, 64)
    ]
    # JumpReLU: 10% lower FVU than gated at 8 and 32; at 2 it is outside gated's range.
    rows += [_row(f"j{l0}", "jumprelu", l0, 0.9 * _gated_fvu(l0), 0.01) for l0 in (2, 8, 32)]
    # A lone TopK SAE: a point against the others, but no curve of its own to compare against.
    rows.append(_row("t16", "topk", 16, 1.0, 1.0))
    rows.append(_row("r8", "jumprelu", 8, 0.3, 0.3, source="released"))
    rows.append(_row("r32", "jumprelu", 32, 0.1, 0.1, source="released"))
    return pd.DataFrame(rows)


def test_points_are_read_off_the_rival_curve_at_the_same_l0():
    points = equal_l0.compare(_frame())
    jr = points[(points.architecture == "jumprelu") & (points.versus == "gated")]
    assert sorted(jr.l0) == [8, 32]  # L0 2 is below gated's range: not extrapolated
    np.testing.assert_allclose(jr.fvu_versus, [_gated_fvu(8), _gated_fvu(32)], rtol=1e-12)
    np.testing.assert_allclose(jr.fvu / jr.fvu_versus, 0.9, rtol=1e-12)
    expected = [0.2 - 0.04 * np.log(8), 0.2 - 0.04 * np.log(32)]
    np.testing.assert_allclose(jr.delta_loss_versus, expected)
    # Nothing is compared against the single TopK SAE; TopK itself is compared with gated.
    assert "topk" not in set(points.versus)
    topk_rivals = list(points[points.architecture == "topk"].versus)
    assert topk_rivals == ["gated", "jumprelu", "jumprelu (released)"]
    # Released SAEs form their own curve: jumprelu (released) between L0 8 and 32.
    rel = points[points.versus == "jumprelu (released)"]
    assert set(rel.architecture) == {"gated", "jumprelu", "topk"}
    got = rel[rel.sae == "g16"].fvu_versus.item()
    assert got == pytest.approx(0.3 + (0.1 - 0.3) * np.log(16 / 8) / np.log(32 / 8))


def test_summary_counts_and_medians():
    lines = equal_l0.summary_lines(equal_l0.compare(_frame()))
    line = next(x for x in lines if x.startswith("jumprelu vs gated"))
    assert "(2 points)" in line and "lower FVU at 2 (median ratio 0.90)" in line
    assert "lower delta LM loss at 2" in line
    gated = next(x for x in lines if x.startswith("gated vs jumprelu at"))
    assert "lower FVU at 0" in gated  # gated at 16 is above jumprelu's curve (interpolated)


def test_groups_do_not_mix_sites_or_widths():
    frame = _frame()
    other = frame.copy()
    other["site"] = "mlp_out/1"
    other["fvu"] = 100.0
    points = equal_l0.compare(pd.concat([frame, other]))
    same = points[points.site == "resid_post/1"]
    assert (same.fvu_versus < 1).all()
    assert len(points) == 2 * len(equal_l0.compare(frame))


def test_interpolation_is_linear_in_log_l0_and_nan_outside():
    got = equal_l0.interpolate_log_l0(np.array([10.0, 1.0]), np.array([1.0, 0.0]), 10**0.5)
    assert got == pytest.approx(0.5)
    assert np.isnan(equal_l0.interpolate_log_l0(np.array([1.0, 10.0]), np.array([0.0, 1.0]), 11.0))


def test_transcoders_are_compared_with_their_own_site_pair_only():
    frame = _frame().assign(site="mlp_in/1", transcoder=False, target_site="", kind="mlp_in")
    plain = frame.assign(transcoder=True, target_site="mlp_out/1", kind="transcoder", fvu=100.0)
    affine = plain.assign(kind="transcoder_affine", fvu=200.0)
    points = equal_l0.compare(pd.concat([frame, plain, affine]))
    assert len(points[points.architecture == "jumprelu transcoder"]) > 0
    sae_points = points[~points.architecture.str.contains("transcoder")]
    assert not sae_points.versus.str.contains("transcoder").any()  # SAEs vs SAEs only
    assert (sae_points.fvu_versus < 1).all()
    versus = points[points.architecture == "jumprelu transcoder"].versus
    assert set(versus) == {
        "gated transcoder",
        "gated transcoder_affine",
        "jumprelu transcoder_affine",
        "jumprelu transcoder (released)",
        "jumprelu transcoder_affine (released)",
    }
