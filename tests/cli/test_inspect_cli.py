"""`qpass inspect` is one command in one file (qpass/cli/inspect.py): the graph, the planned
coverage of a pipeline (preset or recipe), the graph after a pass, and the outlier view."""
import qpass
from qpass.cli import main
from qpass.errors import PipelineError
from qpass.inspect.outliers import outlier_prefix


def test_outlier_prefix_stops_before_weight_rounding():
    pipe = qpass.presets.get("w4a4-quarot")                   # FuseNorms, Rotate, GPTQ, …
    assert [p.name for p in outlier_prefix(pipe)] == ["FuseNorms", "Rotate"]
    assert [p.name for p in outlier_prefix(pipe, "fusenorms")] == ["FuseNorms"]
    for after, says in (("GPTQ", "before the weight-rounding pass"), ("nope", "no pass 'nope'")):
        try:
            outlier_prefix(pipe, after)
        except PipelineError as e:
            assert says in str(e)
        else:
            raise AssertionError(f"--after {after} was accepted")


def test_inspect_outliers_names_the_prefix(capsys):
    # w4a4-rtn: FuseNorms, then RTN rounds weights: the prefix is FuseNorms alone
    assert main(["inspect", "tiny-llada-random", "--outliers", "--pipeline", "w4a4-rtn"]) == 0
    out = capsys.readouterr().out
    assert "before / after FuseNorms " in out and "→" not in out and "head" in out


def test_inspect_outliers_and_after_need_a_pipeline(capsys):
    for args in (["--outliers"], ["--after", "RTN"]):
        assert main(["inspect", "tiny-llada-random", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--pipeline P" in err[0], err


def test_inspect_planned_coverage_of_a_recipe(tmp_path, capsys):
    import json
    recipe = tmp_path / "recipe.py"
    recipe.write_text("from qpass import passes as P\npipeline = [P.RTN('int4:g32:sym')]\n")
    assert main(["inspect", "tiny-llada-random", "--pipeline", str(recipe), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    linears = [r for r in rows if r["status"] == "quantized"]
    assert linears and all(r["reason"].startswith("planned") for r in linears)


def test_inspect_of_a_real_checkpoint_asks_for_calibration_data(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    qpass.models.save_checkpoint(qpass.models.load("tiny-llada"), ckpt)
    for view in (["--after", "GPTQ"], ["--outliers"]):          # GPTQ calibrates
        assert main(["inspect", str(ckpt), "--pipeline", "w4a16-gptq", *view]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--calib PATH" in err[0], err
    data = tmp_path / "calib.txt"
    data.write_text("To be, or not to be, that is the question.\n" * 40)
    assert main(["inspect", str(ckpt), "--pipeline", "w4a16-gptq", "--after", "GPTQ",
                 "--calib", str(data), "--calib-n", "2", "--format", "json"]) == 0
