"""Numbers that are not numbers (issue 10, items 4 and 5).

Every float option of every command refuses NaN and infinities as a usage error: the options are found by
walking the click commands, so a float option added later is covered without touching this file. A training
whose loss or weights stop being finite ends with one line and writes nothing.
"""

from __future__ import annotations

import math

import click
import pytest
from click.testing import CliRunner

from toolkit.cli import cli
from toolkit.cli.options import FiniteFloat

NOT_NUMBERS = ["nan", "inf", "-inf", "NaN", "1e999", "-1e999", "Infinity", "+inf"]


def _commands(group: click.Group, prefix=()):
    # list_commands/get_command, not group.commands: the top group loads its commands lazily.
    ctx = click.Context(group)
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def _float_options():
    return [(words, command, p) for words, command in _commands(cli) for p in command.params
            if isinstance(p, click.Option) and isinstance(p.type, click.types.FloatParamType)]


FLOAT_OPTIONS = _float_options()


def _id(words, param) -> str:
    return " ".join(words) + " " + param.opts[0]


def test_the_walk_finds_the_known_float_options():
    """Guards the discovery itself: were it to find nothing, the parametrized test would pass vacuously."""
    found = {_id(w, p) for w, _, p in FLOAT_OPTIONS}
    assert {"export --atol", "export --rtol", "export --int8-max-drop", "train --lr", "bench --duration"} <= found


@pytest.mark.parametrize("words, param", [(w, p) for w, _, p in FLOAT_OPTIONS],
                         ids=[_id(w, p) for w, _, p in FLOAT_OPTIONS])
def test_every_float_option_uses_the_shared_finite_type(words, param):
    assert isinstance(param.type, FiniteFloat), f"{_id(words, param)} is {param.type!r}: use options.FiniteFloat"


@pytest.mark.parametrize("value", NOT_NUMBERS)
@pytest.mark.parametrize("words, command, param", FLOAT_OPTIONS, ids=[_id(w, p) for w, _, p in FLOAT_OPTIONS])
def test_not_a_number_is_a_usage_error_naming_the_option(words, command, param, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Required arguments get a placeholder (never read: the option fails first); the option is last.
    args = [*words]
    for p in command.params:
        if isinstance(p, click.Argument) and p.required:
            args += ["placeholder"] * max(p.nargs, 1)
    result = CliRunner().invoke(cli, [*args, f"{param.opts[0]}={value}"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: Invalid value for '{param.opts[0]}': {value!r} is not a finite number."]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, value, expected", [
    ({"min": 0}, "0", 0.0),
    ({"min": 0}, "1e-3", 1e-3),
    ({"min": 0}, "3.4e38", 3.4e38),
    ({"min": 0, "min_open": True}, "1e30", 1e30),  # huge but finite: accepted (train stops on divergence)
    ({"min": 0, "min_open": True}, "5e-324", 5e-324),
])
def test_finite_numbers_still_pass(kwargs, value, expected):
    assert FiniteFloat(**kwargs).convert(value, None, None) == expected


@pytest.mark.parametrize("kwargs, value, words", [
    ({"min": 0}, "-1", "not in the range x>=0"),
    ({"min": 0, "min_open": True}, "0", "not in the range x>0"),
    ({"min": 0, "max": 1}, "inf", "is not a finite number"),  # not "not in the range": the real reason
    ({"min": 0}, "twelve", "is not a valid float"),
])
def test_range_and_spelling_are_still_checked(kwargs, value, words):
    with pytest.raises(click.BadParameter, match=words):
        FiniteFloat(**kwargs).convert(value, None, None)


@pytest.mark.parametrize("name", ["atol", "rtol", "int8_max_drop"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_export_library_refuses_tolerances_that_switch_its_gates_off(name, value, tmp_path):
    """The library call is guarded too (programming error, before the checkpoint is even opened)."""
    from toolkit.export.pipeline import ExportOptions, export_checkpoint

    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        export_checkpoint(tmp_path / "absent.pth", ExportOptions(**{name: value}))
    assert list(tmp_path.iterdir()) == []


def test_gates_fail_closed_on_nan():
    """Were a NaN ever to reach a gate, it fails: NaN is never within a tolerance."""
    import numpy as np

    from toolkit.export.parity import Comparison, _diff, int8_problem

    ref = np.ones((2, 10), np.float32)
    assert _diff(ref.copy(), ref, math.nan, 0.0)[2] == ref.size
    assert int8_problem(Comparison(format="int8", test_accuracy=math.nan), 0.9, 0.3) is not None


@pytest.mark.parametrize("value", ["18446744073709551616", "-1", "1e3", "nan"])
def test_train_seed_outside_torchs_range_is_a_usage_error(value, tmp_path, monkeypatch):
    """Integers have their own not-a-number: a seed torch cannot unpack ended in a traceback after data loading."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["train", "--seed", value])
    assert result.exit_code == 2 and "Invalid value for '--seed'" in result.output
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- item 5: a training that diverges

def _train(out, *args):
    return CliRunner().invoke(cli, ["train", "--out", str(out), "--epochs", "1", "--train-subset", "100",
                                    "--no-progress", "--device", "cpu", *args])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["seed", "onecycle"])
def test_diverging_training_stops_with_one_line_and_keeps_the_old_checkpoint(recipe, tmp_path):
    out = tmp_path / "model.pth"
    old = b"an older checkpoint that must survive"
    out.write_bytes(old)
    result = _train(out, "--recipe", recipe, "--lr", "1e30", "--force")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("toolkit: error: training diverged: ")
    assert "learning rate 1e+30" in lines[0] and "nothing was written" in lines[0]
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]  # no metrics, no figures, no temporaries


@pytest.mark.slow
def test_diverging_training_into_a_new_folder_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "deeper" / "model.pth"
    result = _train(out, "--lr", "1e30")
    assert result.exit_code == 1 and "training diverged" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("lr", [math.inf, 1e38, 3.4e38])
def test_library_raises_a_typed_error_for_a_training_that_diverges(lr, tmp_path):
    """What the CLI now refuses up front (inf) and what it cannot (a finite rate far too high), at the library."""
    from toolkit.errors import EXIT_ERROR, ToolkitError
    from toolkit.train.run import TrainJob, train_to_files
    from toolkit.train.trainer import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="training diverged") as caught:
        train_to_files(TrainJob(epochs=1, lr=lr, train_subset=100, device="cpu", progress=False),
                       out=tmp_path / "model.pth")
    assert isinstance(caught.value, ToolkitError) and caught.value.exit_code == EXIT_ERROR
    assert list(tmp_path.iterdir()) == []
