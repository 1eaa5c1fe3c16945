"""`reproduce transformer`'s tables of the whole block on the emulated Cortex-M7, from results
written here by hand (no training, no device): each figure checked against sums done here."""
import pytest

from mam_tf.experiments.transformer import config_for
from mam_tf.experiments.transformer import report


def _run(kind, seed, ops, equal=True, ran=True):
    whole = ({"ran": True, "equal": equal, "ops": ops, "arena_used": 1000 + seed,
              "instructions": sum(c for _, c in ops)} if ran else
             {"ran": False, "reason": "the model firmware exited 6"})
    return {"kind": kind, "seed": seed, "device": {"ran": True, "equal": True, "ops": [],
                                                    "whole_model": whole}}


MAC_OPS = [["FULLY_CONNECTED", 100], ["RESHAPE", 3], ["MAC_SPARSE", 40], ["RESHAPE", 5],
           ["MAC_SPARSE", 20], ["RESHAPE", 7]]
MAM_OPS = [["FULLY_CONNECTED", 110], ["MUL", 9], ["MAM_SPARSE", 50], ["MAM_SPARSE", 30]]


def test_whole_block_rows_add_each_runs_ops():
    results = {"runs": [_run("mac", 0, MAC_OPS), _run("mam", 0, MAM_OPS, equal=False),
                        _run("mac", 1, MAC_OPS, ran=False)]}
    rows = report.whole_model_rows(results)
    # 100+3+40+5+20+7 = 175, of which 60 sparse; 110+9+50+30 = 199, of which 80
    assert rows == [["MAC", 0, "yes", 175, "60 (34.3%)", 1000],
                    ["MAM", 0, "NO", 199, "80 (40.2%)", 1000]]


def test_operator_rows_count_each_kinds_own_ops_and_take_the_median_over_seeds():
    mac_seed1 = [[name, 3 * count] for name, count in MAC_OPS]  # every count tripled
    mac_seed2 = [[name, 8 * count] for name, count in MAC_OPS]  # x8: median x3, mean x4
    results = {"runs": [_run("mac", 0, MAC_OPS), _run("mac", 1, mac_seed1),
                        _run("mac", 2, mac_seed2), _run("mam", 0, MAM_OPS)]}
    rows = {r[0]: r[1:] for r in report.operator_rows(results)}
    # [MAC ops, MAC instructions (median of x1, x3, x8 = x3), MAM ops, MAM instructions]
    assert rows["FULLY_CONNECTED"] == [1, 300, 1, 110]
    assert rows["RESHAPE"] == [3, 45, "-", "-"]
    assert rows["MUL"] == ["-", "-", 1, 9]
    assert rows["MAC_SPARSE"] == [2, 180, "-", "-"]
    assert rows["MAM_SPARSE"] == ["-", "-", 2, 80]
    assert [r[0] for r in report.operator_rows(results)][-2:] == ["MAC_SPARSE", "MAM_SPARSE"]


@pytest.mark.parametrize("whole, says", [
    (None, "no TFLite-Micro library for Cortex-M7 given"),
    ({"ran": False, "reason": "the model firmware exited 6"}, "the model firmware exited 6"),
])
def test_the_report_says_why_the_whole_block_did_not_run(whole, says):
    cfg = config_for("tiny")
    results = {"chance": 0.25,
               "summary": {k: {m: {"n": 0} for m in ("trained", "one_shot", "fine_tuned", "int8")}
                           for k in ("mac", "mam")},
               "runs": [{"kind": "mac", "seed": 0,
                         "device": {"ran": True, "equal": True, "ops": [], "whole_model": whole}}]}
    text = report._report(cfg, results)
    section = text.split("## The whole block in TFLite-Micro on the emulated Cortex-M7", 1)[1]
    assert f"Not run: {says}" in section
