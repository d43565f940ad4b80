"""toolkit bench: statistics, the JSON schema of a real run, CUDA refusal, and the torch-free path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolkit.bench.document import ResultRow, roofline
from toolkit.bench.peak import Peak
from toolkit.cli import cli
from toolkit.timing import Latency, measure, summarize

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--provider", "cpu", "--batch-sizes", "1,4", "--warmup", "1", "--runs", "5", "--no-progress"]


def _run_toolkit(args, cwd, pythonpath_first=None):
    env = dict(os.environ)
    parts = [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if pythonpath_first:
        parts.insert(0, str(pythonpath_first))
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _cuda_usable(model) -> bool:
    from toolkit.bench.ort_engines import bench_options
    from toolkit.errors import ProviderUnavailable
    from toolkit.runtime import session_on

    try:
        session_on(model, "cuda", bench_options(1)[0])
        return True
    except ProviderUnavailable:
        return False


# ---------------------------------------------------------------- statistics from known timings

def test_percentiles_and_throughput_from_known_timings():
    timings = [i / 1000 for i in range(100, 0, -1)]  # 1..100 ms, deliberately unsorted
    s = summarize(timings, batch=8)
    lat = s.latency_ms
    # linear interpolation between order statistics: rank (n-1)*q
    assert lat.p50 == pytest.approx(50.5)
    assert lat.p90 == pytest.approx(90.1)
    assert lat.p99 == pytest.approx(99.01)
    assert lat.mean == pytest.approx(50.5)
    assert (lat.min, lat.max) == (pytest.approx(1.0), pytest.approx(100.0))
    assert s.runs == 100
    assert s.throughput_ips == pytest.approx(8 * 100 / 5.05)  # images / total seconds


def test_single_timing_and_bad_input():
    s = summarize([0.002], batch=1)
    assert all(v == pytest.approx(2.0) for v in vars(s.latency_ms).values())
    assert s.throughput_ips == pytest.approx(500.0)
    for bad in ([], [-1.0], [float("nan")], [0.0, 0.0]):
        with pytest.raises(ValueError):
            summarize(bad, batch=1)
    with pytest.raises(ValueError):
        summarize([0.1], batch=0)


def test_measure_times_each_call():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.002)

    first, times = measure(work, warmup=3, runs=7)
    assert len(calls) == 1 + 3 + 7 and len(times) == 7
    assert first >= 0.002 and min(times) >= 0.002
    calls.clear()
    first, times = measure(work, warmup=0, duration=0.001, min_runs=4)
    assert len(times) == 4  # the duration passed at once, min_runs still holds
    with pytest.raises(ValueError):
        measure(work, warmup=0)


def _row(engine, batch, p50, provider="cpu", mode="e2e"):
    return ResultRow(engine, provider, "float32", batch, mode, p50, 10, Latency(p50, p50, p50, p50, p50 / 2, p50),
                     batch / (p50 / 1e3), None)


def test_roofline_from_known_rows():
    results = [_row("onnx", 1, 0.08), _row("eager", 1, 0.4), _row("onnx", 1024, 20.0)]
    peaks = {"cpu": Peak("cpu", gflops_median=60.0)}
    flops = 1_133_056
    rows = {r.engine: r for r in roofline(results, peaks, flops)}
    rate = flops * 1024 / 1e9 / 0.020
    assert rows["onnx"].batch == 1024 and rows["onnx"].gflops_p50 == pytest.approx(rate)
    assert rows["onnx"].gflops_best == pytest.approx(2 * rate)  # at min latency, half the p50 here
    assert rows["onnx"].fraction_of_peak == pytest.approx(rate / 60.0)
    assert rows["eager"].batch == 1 and rows["eager"].peak_gflops_median == 60.0
    # Without a FLOP count (an older export) the rows say so with nulls, never a guess.
    assert all(r.gflops_p50 is None and r.fraction_of_peak is None for r in roofline(results, peaks, None))
    # On CUDA the roof is compared with the resident-buffer mode, not e2e.
    cuda = [_row("onnx", 8, 1.0, "cuda", "e2e"), _row("onnx", 8, 0.5, "cuda", "device")]
    assert roofline(cuda, {}, flops)[0].mode == "device"


def test_goals_script_judges_a_bench_json(tmp_path):
    from dataclasses import asdict

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_goals
    finally:
        sys.path.pop(0)
    doc = {"schema_version": "3", "model": {"flops_per_image": 1_133_056},
           "peak": {"cpu": asdict(Peak("cpu", gflops_median=60.0))},
           "results": [asdict(r) for r in (_row("onnx", 1, 0.08), _row("eager", 1, 0.4), _row("onnx", 1024, 20.0))]}
    rate = 1_133_056 * 1024 / 1e9 / 0.020
    # a file of schema 1 or 2 names the ONNX Runtime engine "ort": judged the same
    old = {**doc, "schema_version": "2", "results": [{**r, "engine": "ort"} if r["engine"] == "onnx" else r
                                                     for r in doc["results"]]}
    for judged in (doc, old, {k: v for k, v in old.items() if k != "schema_version"}):
        (met1, ok1), (met2, ok2) = bench_goals.goals(judged)
        assert ok1 is True and "0.200" in met1
        assert ok2 is (rate / 60.0 >= 0.85) and f"{rate / 60.0:.3f}" in met2
    doc["results"] = doc["results"][:1]
    assert [ok for _, ok in bench_goals.goals(doc)] == [None, None]  # not evaluated, never counted as met
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    assert bench_goals.main([str(path)]) == 0


def test_flops_per_image_travels_in_the_contract(tiny_onnx):
    from toolkit.runtime import create_session, read_contract
    from toolkit.train.model import MLPConfig

    contract = read_contract(create_session(tiny_onnx, "cpu")[0], tiny_onnx)
    assert contract.flops_per_image == MLPConfig().flops_per_image()
    meta = contract.to_metadata()
    del meta["toolkit.flops_per_image"]  # a file exported before the field existed
    assert type(contract).from_metadata(meta, tiny_onnx).flops_per_image is None


def test_cpu_peak_in_process_with_the_asked_threads():
    from threadpoolctl import threadpool_info

    from toolkit.bench.peak import cpu_peak

    before = [i["num_threads"] for i in threadpool_info()]
    peak = cpu_peak(1)
    assert peak.threads == 1 and peak.error is None and peak.library.startswith("numpy")
    assert len(peak.shapes) == 2 and all(r.reps == 15 and r.gflops_best >= r.gflops_median > 0 for r in peak.shapes)
    assert peak.gflops_median == max(r.gflops_median for r in peak.shapes)
    assert [i["num_threads"] for i in threadpool_info()] == before  # the limit ends with the measurement


# ---------------------------------------------------------------- a real run and its JSON schema

LATENCY = {"p50", "p90", "p99", "mean", "min", "max"}


def _check_schema(doc):
    num = (int, float)
    assert doc["schema_version"] == "3"
    assert isinstance(doc["created"], str)
    assert doc["command"].startswith("toolkit bench --model ") and " --batch-sizes 1,4 --warmup 1 --runs 5" in doc["command"]
    m = doc["model"]
    assert isinstance(m["path"], str) and len(m["sha256"]) == 64 and isinstance(m["flops_per_image"], int)
    assert m["precision"] == "float32"
    s = doc["settings"]
    assert s["providers"] == ["cpu"] and s["batch_sizes"] == [1, 4] and s["runs"] == 5 and s["duration_s"] is None
    assert isinstance(s["threads"], int) and s["threads"] >= 1
    env = doc["environment"]
    for key in ("model", "logical_cpus", "usable_cpus", "physical_cores"):
        assert key in env["cpu"]
    assert env["threads"] == s["threads"] and isinstance(env["onnxruntime"], str)
    assert env["gpu"] is None
    assert set(env["load_average_1m"]) == {"start", "end"}
    for e in doc["engines"]:
        assert isinstance(e["create_s"], float) and e["create_s"] > 0 and isinstance(e["import_s"], float)
        assert isinstance(e["providers_used"], list) and e["providers_used"]
        assert isinstance(e["config"], dict) and isinstance(e["notes"], list)
    for r in doc["results"]:
        assert set(r) == {"engine", "provider", "precision", "batch", "mode", "first_run_ms", "runs",
                          "latency_ms", "throughput_ips", "bytes"}
        assert set(r["latency_ms"]) == LATENCY
        assert all(isinstance(v, num) and v > 0 for v in r["latency_ms"].values())
        lat = r["latency_ms"]
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["runs"] == 5 and r["first_run_ms"] > 0 and r["throughput_ips"] > 0
        assert r["throughput_ips"] == pytest.approx(r["batch"] / (lat["mean"] / 1e3))
    for sk in doc["skipped"]:
        assert set(sk) == {"engine", "provider", "reason", "batch_sizes"} and sk["engine"] and sk["reason"]
    peak = doc["peak"]["cpu"]
    assert peak["error"] is None and peak["device"] == "cpu" and peak["gflops_median"] > 0 and peak["gflops_best"] >= peak["gflops_median"]
    assert peak["threads"] == s["threads"] and peak["library"].startswith("numpy")
    for row in doc["roofline"]:
        assert row["batch"] == 4 and row["gflops_p50"] > 0 and row["fraction_of_peak"] > 0
    assert "goals" not in doc  # acceptance goals are benchmarks/bench_goals.py's business
    assert isinstance(doc["notes"], list)


def test_bench_json_schema_table_and_plot(tiny_onnx, tiny_run, tmp_path):
    shutil.copy(tiny_run[0], tiny_onnx.with_suffix(".pth"))  # so the eager engine runs too
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(cli, ["bench", "--model", str(tiny_onnx), *FAST, "--json", str(out),
                                      "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    _check_schema(doc)
    assert [(e["engine"], e["provider"]) for e in doc["engines"]] == [("onnx", "cpu"), ("eager", "cpu")]
    ort = doc["engines"][0]
    assert ort["providers_used"] == ["CPUExecutionProvider"]
    assert ort["config"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert ort["config"]["intra_op_num_threads"] == doc["settings"]["threads"]
    assert {s["engine"] for s in doc["skipped"]} == {"int8", "int8-static", "fp16", "torchscript", "pt2",
                                                     "executorch"}  # their files are absent
    assert len(doc["results"]) == 4 and {r["mode"] for r in doc["results"]} == {"e2e"}
    ort4 = next(r for r in doc["results"] if r["engine"] == "onnx" and r["batch"] == 4)
    ort_roof = next(r for r in doc["roofline"] if r["engine"] == "onnx")
    assert ort_roof["gflops_p50"] == pytest.approx(doc["model"]["flops_per_image"] * 4 / 1e9
                                                   / (ort4["latency_ms"]["p50"] / 1e3))
    assert ort_roof["fraction_of_peak"] == pytest.approx(ort_roof["gflops_p50"] / doc["peak"]["cpu"]["gflops_median"])
    assert doc["environment"]["torch"]  # eager imported torch, so its version is reported
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("engine "))
    assert "p50 ms" in header and "images/s" in header
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_engine_passed_in_runs_like_the_built_ins(tiny_onnx):
    from toolkit.bench import BenchSettings, run_bench
    from toolkit.bench.ort_engines import OrtEngine

    class SingleThreadOrt(OrtEngine):
        name = "ort-1thread"
        description = "ONNX Runtime pinned to one thread"

        def open(self, provider, threads, options):
            return super().open(provider, 1, options)

    report = run_bench(BenchSettings(model=tiny_onnx, provider="cpu", batch_sizes=(2,), warmup=0, runs=3,
                                     engines=("ort-1thread",), peak=False), {SingleThreadOrt.name: SingleThreadOrt})
    assert [e.engine for e in report.engines] == ["ort-1thread"]
    assert report.engines[0].config["intra_op_num_threads"] == 1
    assert report.results[0].runs == 3 and report.peak == {} and report.skipped == []


@pytest.mark.parametrize("args,code,message", [
    (["--engines", "nope"], 2, "unknown engine(s) nope"),
    (["--runs", "3", "--duration", "1"], 2, "--runs or --duration"),
    (["--batch-sizes", "0,2"], 2, "batch sizes must be integers >= 1"),
    (["--engines", "torchscript"], 1, "model.pt: no such file, needed by engine torchscript"),
])
def test_bad_requests_fail_before_measuring(tiny_onnx, args, code, message):
    result = CliRunner().invoke(cli, ["bench", "--model", str(tiny_onnx), "--no-progress", *args])
    assert result.exit_code == code, result.output
    assert message in result.output


def test_existing_json_needs_force(tiny_onnx, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("keep")
    result = CliRunner().invoke(cli, ["bench", "--model", str(tiny_onnx), *FAST, "--json", str(out)])
    assert result.exit_code == 1 and "already exists; pass --force" in result.output
    assert out.read_text() == "keep"


# ---------------------------------------------------------------- CUDA refusal (this machine has no GPU)

def test_cuda_unavailable_exits_5_with_the_reason(tiny_onnx):
    if _cuda_usable(tiny_onnx):
        pytest.skip("CUDA works here; the refusal path needs a machine without it")
    proc = _run_toolkit(["bench", "--model", str(tiny_onnx), "--provider", "cuda", "--engines", "onnx",
                         "--runs", "2"], cwd=tiny_onnx.parent)
    assert proc.returncode == 5
    assert proc.stdout == ""  # not a single number, CPU or otherwise
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("toolkit: error: --provider cuda: engine onnx: onnxruntime: CUDA provider could not")
    assert "\x1b[" not in proc.stderr  # ORT's coloured log lines stay out of the user's face


def test_provider_all_lists_cuda_as_skipped(tiny_onnx, tmp_path):
    if _cuda_usable(tiny_onnx):
        pytest.skip("CUDA works here")
    out = tmp_path / "r.json"
    args = ["bench", "--model", str(tiny_onnx), *FAST, "--engines", "onnx", "--no-peak", "--json", str(out)]
    args[args.index("cpu")] = "all"
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert {r["provider"] for r in doc["results"]} == {"cpu"}
    cuda = [s for s in doc["skipped"] if s["provider"] == "cuda"]
    assert cuda and "CUDA" in cuda[0]["reason"]
    assert "skipped   onnx on cuda: onnxruntime: CUDA provider could not be loaded" in result.output


# ---------------------------------------------------------------- the ONNX-only path without torch

def _torch_blocker(tmp_path) -> tuple[Path, Path]:
    shim, marker = tmp_path / "shim", tmp_path / "torch-import-attempted"
    (shim / "torch").mkdir(parents=True)
    (shim / "torch" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('torch is blocked for this test')\n")
    return shim, marker


def test_onnx_only_path_runs_without_torch(tiny_onnx, tiny_run, tmp_path):
    shim, marker = _torch_blocker(tmp_path)
    out = tmp_path / "r.json"
    proc = _run_toolkit(["bench", "--model", str(tiny_onnx), *FAST, "--no-peak", "--json", str(out)],
                        cwd=tmp_path, pythonpath_first=shim)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert {e["engine"] for e in doc["engines"]} == {"onnx"}
    assert doc["environment"]["torch"] is None
    assert not marker.exists(), "the ONNX-only run tried to import torch"

    # With a checkpoint beside the model the eager engine is tried, fails to import torch, and is skipped.
    shutil.copy(tiny_run[0], tiny_onnx.with_suffix(".pth"))
    proc = _run_toolkit(["bench", "--model", str(tiny_onnx), *FAST, "--no-peak", "--json", str(out), "--force"],
                        cwd=tmp_path, pythonpath_first=shim)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert {e["engine"] for e in doc["engines"]} == {"onnx"}
    eager = next(s for s in doc["skipped"] if s["engine"] == "eager")
    assert "torch cannot be imported" in eager["reason"] and "blocked" in eager["reason"]
    assert "torch cannot be imported" in proc.stdout


def test_bench_package_and_help_do_not_import_torch():
    code = ("import sys\nimport toolkit.bench, toolkit.export.bench_engines\n"
            "from toolkit.cli import main\nsys.argv = ['toolkit', 'bench', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, 'torch or onnx was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "--engines" in proc.stdout and "--provider" in proc.stdout


def test_int8_label_comes_from_the_contract(tiny_onnx, tiny_run):
    from toolkit.atomic import file_sha256
    from toolkit.bench import ORT_ENGINES, BenchSettings, run_bench
    from toolkit.export.quantize import quantize_int8
    from toolkit.runtime import create_session, read_contract

    int8 = tiny_onnx.with_name("model.int8.onnx")
    settings = BenchSettings(model=tiny_onnx, provider="cpu", batch_sizes=(1,), warmup=0, runs=2, engines=("int8",),
                             peak=False)
    shutil.copy(tiny_onnx, int8)  # a float file under the INT8 name is labelled by what it says it is
    report = run_bench(settings, ORT_ENGINES)
    assert report.results[0].precision == "float32"
    assert "says float32, not the int8 this engine expects" in report.engines[0].notes[0]

    contract = read_contract(create_session(tiny_onnx, "cpu")[0], tiny_onnx)
    quantize_int8(tiny_onnx, int8, contract, file_sha256(tiny_onnx))
    report = run_bench(settings, ORT_ENGINES)
    assert report.results[0].precision == report.engines[0].precision == "int8" and report.engines[0].notes == []


def test_cuda_peak_without_cuda_is_an_error_entry_not_a_crash():
    import torch

    from toolkit.bench.runner import _peak
    from toolkit.export.bench_engines import cuda_peak

    if torch.cuda.is_available():
        pytest.skip("CUDA works here; this is the refusal path")
    peak = _peak("cuda", 1, cuda_peak)
    assert peak.device == "cuda" and peak.gflops_median is None and "cannot use CUDA here" in peak.error
    assert "no matmul measurement for cuda" in _peak("cuda", 1, None).error  # an edge install has no torch side
