"""The leave-one-city-out harness (benchmarks/leave_one_out.py, real_maps.py --leave-one-out): a city's
constants are chosen without it, cities without a class do not vote on it, overrides reach the reader
and are undone, and bad options exit 2 naming the option."""
import io
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import leave_one_out as loo  # noqa: E402
from backend.reasoners import legend, mapreader  # noqa: E402


def row(iou, truth_px=100, places=1):
    return {"iou": iou, "precision": iou, "recall": iou, "truth_px": truth_px, "places": places}


def city(parks_a, parks_b, edu_a=0.5, edu_b=0.5, edu_truth=100):
    return {"A": {"parks": row(parks_a), "educational": row(edu_a, edu_truth)},
            "B": {"parks": row(parks_b), "educational": row(edu_b, edu_truth)}}


def test_the_held_out_city_never_chooses_its_own_constants():
    # x and y prefer setting A; z alone prefers B, by far. Holding z out must give A, whatever z says.
    table = {"x": city(0.8, 0.7), "y": city(0.9, 0.6), "z": city(0.1, 1.0)}
    assert loo.choose(table, "z", ["A", "B"]) == "A"
    table["z"] = city(1.0, 0.0)
    assert loo.choose(table, "z", ["A", "B"]) == "A"
    # and z's scores do decide for the others: with z in the pool B wins for x
    table = {"x": city(0.8, 0.7), "y": city(0.6, 0.9), "z": city(0.1, 1.0)}
    assert loo.choose(table, "x", ["A", "B"]) == "B"


def test_a_city_without_the_class_does_not_vote_on_it():
    # y has no educational truth (its IoU of 1.0 for "found nothing" must not count); x decides it
    table = {"x": city(0.5, 0.5, edu_a=0.7, edu_b=0.4), "y": city(0.5, 0.5, edu_a=0.0, edu_b=1.0, edu_truth=0),
             "z": city(0.5, 0.5)}
    assert loo.choose(table, "z", ["A", "B"]) == "A"
    assert loo.summary({"x": table["x"]["A"], "y": table["y"]["A"]}, "educational") == (0.7, 0.7, "x")


def test_ties_keep_the_committed_setting_first():
    table = {"x": city(0.5, 0.5), "y": city(0.5, 0.5)}
    assert loo.choose(table, "x", ["B", "A"]) == "B"


def test_grid_one_at_a_time_and_product():
    committed = loo.defaults(["REACH_M", "ROAD_M"])
    each = loo.parse_grid([f"REACH_M=40,{committed['REACH_M']:g}", "ROAD_M=4,12"], each=True)
    assert each[0] == committed and len(each) == 4
    assert all(sum(s[n] != committed[n] for n in s) == 1 for s in each[1:])
    assert len(loo.parse_grid(["REACH_M=40,60", "ROAD_M=4,8,12"])) == 6


@pytest.mark.parametrize("spec", ["NOPE=1", "REACH_M", "REACH_M=a", "REACH_M=0", "REACH_M="])
def test_bad_grid_is_refused(spec):
    with pytest.raises(loo.GridError, match="--grid"):
        loo.parse_grid([spec])


def test_every_overridable_constant_is_a_number_the_reader_reads():
    for name, (mod, _) in loo.OVERRIDABLE.items():
        assert mod in (legend, mapreader)
        assert isinstance(getattr(mod, name), (int, float)), name
        # read at call time (a module global in a function body), not frozen as a keyword default
        src = open(mod.__file__, encoding="utf-8").read()
        assert src.count(name) >= 2, name


def test_constants_are_set_for_the_run_and_restored_even_on_error():
    before = legend.REACH_M, mapreader.WORK_M
    with pytest.raises(RuntimeError):
        with loo.constants({"REACH_M": 12.5, "WORK_M": 2.0}):
            assert (legend.REACH_M, mapreader.WORK_M) == (12.5, 2.0)
            raise RuntimeError
    assert (legend.REACH_M, mapreader.WORK_M) == before


def test_report_says_which_cities_have_no_such_place():
    r = {"parks": row(0.8), "educational": row(0.5), "schools": row(0.3), "hospitals": row(0.0, 0, places=2)}
    q = {**r, "parks": row(0.6)}
    res = {"resolution": 1.0, "settings": ["committed"], "committed": "committed", "chosen": {"p": "c", "q": "c"},
           "in_sample": {"p": r, "q": q}, "held_out": {"p": r, "q": q}}
    out = io.StringIO()
    loo.report(res, out=out)
    text = out.getvalue()
    assert "| p | hospitals (none in truth) | – | – | – | – | – | – | 2 false |" in text
    assert "| parks | 0.70 | 0.60 (q) | 0.70 | 0.60 (q) | 0.75 / 0.65 |" in text
    assert "| hospitals |" not in text.split("target mean")[1]


def test_city_name_of_a_build_output_folder():
    assert loo.city_name("/work/realdata_extra/munich/out") == "munich"
    assert loo.city_name("/work/shared/realdata/porto/") == "porto"


@pytest.mark.parametrize("args,says", [(["--grid", "FOO=1"], "--grid"), (["--cities", "/nope/a", "/nope/b"], "--cities")])
def test_cli_refuses_bad_options_with_exit_2(args, says):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "real_maps.py"), "--leave-one-out", *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr
