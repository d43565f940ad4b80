"""The registry of export formats (toolkit/formats.py) drives every consumer: export's files and gates, the parity
runners, bench's engines, inspect, the CLI help texts and the README's table; an old name still works, with a warning.

Real exports of a tiny checkpoint, real bench runs and real `toolkit` commands; nothing is mocked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import ROOT
from toolkit import formats as registry
from toolkit.cli import cli

FAST_BENCH = ["--provider", "cpu", "--batch-sizes", "1", "--warmup", "0", "--runs", "2", "--no-peak", "--no-progress"]
OLD_NAMES = sorted(registry.ALIASES)


def _mentions(text: str, name: str) -> bool:
    """``name`` as a whole name in ``text`` (int8 inside int8-static does not count)."""
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


# ---------------------------------------------------------------- the rows themselves

def test_rows_are_one_name_one_suffix_each_and_variants_follow_what_they_are_made_from():
    names = [f.name for f in registry.FORMATS]
    suffixes = [f.suffix for f in registry.FORMATS]
    assert len(set(names)) == len(names) and len(set(suffixes)) == len(suffixes)
    assert not set(registry.ALIASES) & set(names)  # an old name never shadows a current one
    assert sum(len(f.aliases) for f in registry.FORMATS) == len(registry.ALIASES)  # and names one format only
    assert set(registry.DEFAULTS) <= set(names) and registry.DEFAULTS
    for i, f in enumerate(registry.FORMATS):
        assert f.kind in registry.KINDS and f.suffix.startswith(".")
        assert (f.kind == "float") == (f.made_from is None), f.name  # float: logit gate; the others: accuracy gate
        if f.made_from:  # written after the file it is made from, which is a float format
            assert f.made_from in names[:i] and registry.BY_NAME[f.made_from].kind == "float"


def test_every_reference_resolves_and_each_engine_is_named_after_its_format(tmp_path):
    from toolkit.cli.bench import known_engines
    from toolkit.export import parity

    model = tmp_path / "m.onnx"
    engines = known_engines()
    assert list(engines) == [*registry.NAMES, "eager", "openvino"]
    assert list(parity.RUNNERS) == list(registry.NAMES)
    for row in registry.FORMATS:
        assert callable(registry.load(row.exporter)), row.name
        assert parity.RUNNERS[row.name] is registry.load(row.validator)
        engine = engines[row.name]
        assert issubclass(engine, registry.load(row.engine))
        assert (engine.name, engine.suffix, engine.precision) == (row.name, row.suffix, row.precision)
        # the float32 ONNX file is --model itself; every other engine runs <stem><suffix> beside it
        assert engine(model).artifact() == (model if row.name == "onnx" else tmp_path / f"m{row.suffix}")


def test_the_edge_core_holds_the_registry_without_torch_or_the_torch_side():
    code = ("import sys, toolkit.formats, toolkit.bench, toolkit.inspect\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('toolkit.export'))\n"
            "print(bad)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------- export, inspect and bench, from one export

@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """One export of every format this installation can write but ExecuTorch (its lowering alone takes ~20 s;
    tests/test_export_formats.py exports it), with the fast legacy ONNX exporter: (report, folder, names)."""
    from toolkit.export.pipeline import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("formats")
    names = [f.name for f in registry.FORMATS if f.name != "executorch" and not registry.missing(f, "legacy")]
    report = export_checkpoint(tiny_run[0], ExportOptions(formats=names, onnx_exporter="legacy", latency_runs=50),
                               out_dir=out)
    return report, out, names


def test_export_writes_each_row_under_its_suffix_and_judges_it_by_its_kind(exported):
    from toolkit.export.report import VariantResult
    from toolkit.runtime import create_session, read_contract

    report, out, names = exported
    assert report.passed, report.problems
    assert list(report.formats) == names  # the registry's order, one name per format
    assert sorted(p.name for p in out.iterdir()) == sorted([f"model{registry.BY_NAME[n].suffix}" for n in names]
                                                           + ["model.export.json"])
    doc = json.loads((out / "model.export.json").read_text())
    assert doc["schema_version"] == "2" and list(doc["formats"]) == names
    for name in names:
        row, result = registry.BY_NAME[name], report.formats[name]
        assert Path(result.file) == out / f"model{row.suffix}"
        assert isinstance(result, VariantResult) == bool(row.made_from), name
        assert report.timings[f"{name}_export_s"] > 0
        if row.container == "onnx":  # the precision the file's contract states is its kind's
            path = Path(result.file)
            assert read_contract(create_session(path, "cpu")[0], path).precision == row.precision, name


def test_inspect_names_each_written_file_by_its_format(exported, tmp_path):
    from toolkit.inspect import MODEL_KINDS

    _, out, names = exported
    for name in names:
        row = registry.BY_NAME[name]
        if row.container not in MODEL_KINDS:
            continue
        result = CliRunner().invoke(cli, ["inspect", str(out / f"model{row.suffix}"), "--json"])
        assert result.exit_code == 0, result.output
        info = json.loads(result.stdout)
        assert (info["kind"], info["format"]) == (row.container, name)
    renamed = tmp_path / "weights.bin"  # ONNX content under a name no row has: described, no format claimed
    renamed.write_bytes((out / "model.onnx").read_bytes())
    info = json.loads(CliRunner().invoke(cli, ["inspect", str(renamed), "--json"]).stdout)
    assert info["kind"] == "onnx" and "format" not in info


def test_bench_times_each_written_file_with_the_engine_named_after_its_format(exported, tmp_path):
    _, out, names = exported
    result = CliRunner().invoke(cli, ["bench", "--model", str(out / "model.onnx"), *FAST_BENCH, "--engines",
                                      ",".join(names), "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    doc = json.loads((tmp_path / "b.json").read_text())
    assert [e["engine"] for e in doc["engines"]] == names
    for e in doc["engines"]:
        row = registry.BY_NAME[e["engine"]]
        assert Path(e["file"]) == out / f"model{row.suffix}" and e["precision"] == row.precision
        assert e["notes"] == []  # the file's contract says the precision the row's kind gives


# ---------------------------------------------------------------- old names

def test_an_old_bench_name_warns_in_one_line_and_measures_the_same_engine(exported, tmp_path):
    _, out, _ = exported
    docs = {}
    for name in ("onnx,int8", "ort,ort-int8"):
        path = tmp_path / f"{name}.json"
        result = CliRunner().invoke(cli, ["bench", "--model", str(out / "model.onnx"), *FAST_BENCH, "--engines",
                                          name, "--json", str(path)])
        assert result.exit_code == 0, result.output
        docs[name] = (json.loads(path.read_text()), result.stderr)
    (new, quiet), (old, warned) = docs.values()
    assert quiet == ""
    assert warned.splitlines() == [
        "toolkit: warning: 'ort' is an old name of the onnx format, accepted for now; use 'onnx'",
        "toolkit: warning: 'ort-int8' is an old name of the int8 format, accepted for now; use 'int8'"]
    for doc in (new, old):
        assert [(e["engine"], e["file"], e["precision"]) for e in doc["engines"]] == \
            [(e["engine"], e["file"], e["precision"]) for e in new["engines"]]
        assert doc["settings"]["engines"] == ["onnx", "int8"]  # recorded under the one name


def test_an_old_export_name_warns_in_one_line_and_writes_the_same_file(tiny_ckpt):
    result = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "--formats", "onnx,onnx-int8", "--onnx-exporter",
                                      "legacy"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "toolkit: warning: 'onnx-int8' is an old name of the int8 format, accepted for now; use 'int8'"]
    report = json.loads(tiny_ckpt.with_name("model.export.json").read_text())
    assert list(report["formats"]) == ["onnx", "int8"] and report["formats"]["int8"]["passed"]
    assert tiny_ckpt.with_name("model.int8.onnx").is_file()


@pytest.mark.parametrize("old", OLD_NAMES)
def test_the_library_takes_an_old_name_with_a_deprecation_warning(old, tmp_path):
    from toolkit.export.pipeline import output_paths

    new = registry.ALIASES[old]
    with pytest.warns(DeprecationWarning, match=f"'{old}' is an old name of the {new} format"):
        assert registry.get(old).name == new
    made = registry.BY_NAME[new].made_from
    with pytest.warns(DeprecationWarning):
        paths = output_paths(tmp_path / "model.pth", None, [*([made] if made else []), old])
    assert paths[new] == tmp_path / f"model{registry.BY_NAME[new].suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one name warns about nothing
        assert registry.get(new).name == new


# ---------------------------------------------------------------- help texts and documents

def test_cli_help_lists_exactly_the_registry_names():
    from toolkit.cli import bench, export, inspect

    export_formats = next(p for p in export.command.params if p.name == "formats")
    assert export_formats.type.choices == (*registry.NAMES, "all")
    assert export_formats.default == ",".join(registry.DEFAULTS)
    listed = re.findall(r"(?:^|; |: )([\w-]+) \(<stem>(\.[\w.-]+):", export_formats.help)
    assert listed == [(f.name, f.suffix) for f in registry.FORMATS]
    engines_help = next(p for p in bench.command.params if p.name == "engines").help
    assert re.findall(r"([\w-]+): <stem>(\.[\w.-]+)", engines_help) == [(f.name, f.suffix) for f in registry.FORMATS]
    for text in (export_formats.help, engines_help, export.command.help, inspect.command.help):
        assert not [old for old in OLD_NAMES if _mentions(text, old)], text
    assert re.findall(r"([\w-]+) (\.[\w.-]+)", inspect.command.help.split("\n")[0]) == [
        (f.name, f.suffix) for f in registry.FORMATS if f.container in ("onnx", "torchscript", "pt2")]
    refused = CliRunner().invoke(cli, ["export", "x.pth", "--formats", "tflite"])
    assert refused.exit_code == 2 and f"choose from {', '.join(registry.NAMES)}, all" in refused.output


def test_readme_table_is_the_one_the_registry_makes():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("<!-- formats-table -->\n", 1)[1].split("\n<!-- /formats-table -->", 1)[0]
    assert table == registry.markdown_table()
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == list(registry.NAMES)


def test_the_formats_page_names_engines_as_the_registry_does():
    page = (ROOT / "docs" / "formats.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1].strip() for line in page.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "engine" and rows[1:] == [*registry.NAMES, "eager", "openvino"]
