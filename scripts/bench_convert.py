"""Time `qtools convert` against llm-compressor's `model_free_ptq` on Qwen3-Coder-480B matrix shapes.

Builds a synthetic BF16 checkpoint with the real shapes (hidden 6144, expert 2560, q 12288, k/v 1024; fewer layers
and experts, a small vocab), then, `--repeats` times (default 3), runs each tool in its own subprocess, one after
the other. The first repetition's outputs are checked (`qtools verify --deep`, codes agree with llm-compressor's)
before anything is reported; then GB of BF16 read per second, the ratio in every repetition (median, min, max),
CPU seconds and the peak memory of both. qtools runs again on twice the layers to show its peak memory does not
grow with the checkpoint. `--recipe` picks what both tools write: FP8 block (hf-fp8 or compressed-tensors
FP8_BLOCK; llm-compressor's scheme FP8_BLOCK) or W4A16 round-to-nearest (llm-compressor's scheme W4A16).

    python scripts/bench_convert.py --layers 2 --experts 16 --json bench.json
    python scripts/bench_convert.py --recipe w4a16-rtn --json bench-w4a16.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors import safe_open

from qtools.numerics.int4 import unpack_int4
from qtools.testing.synth import SynthSpec, make_checkpoint

REPO = Path(__file__).resolve().parent.parent
# Shipped recipes (qtools/recipes/) -> llm-compressor's scheme for the same output and what both keep in BF16,
# in llm-compressor's terms (it skips every `*norm` module by itself).
_KEPT = ["lm_head", "model.embed_tokens", "re:.*mlp[.]gate$"]
RECIPES = {
    "fp8-block": ("FP8_BLOCK", _KEPT),
    "fp8-block-compressed-tensors": ("FP8_BLOCK", _KEPT),
    "w4a16-rtn": ("W4A16", [*_KEPT, "re:.*self_attn[.].*"]),  # our recipe converts the experts only
}
# `--format` as before: which FP8 recipe.
FORMAT_RECIPES = {"hf-fp8": "fp8-block", "compressed-tensors": "fp8-block-compressed-tensors"}
LLMC_SCRIPT = """import json, sys
from llmcompressor import model_free_ptq
src, dst, workers, device, ignore, scheme = sys.argv[1:]
model_free_ptq(src, dst, scheme=scheme, ignore=json.loads(ignore), max_workers=int(workers), device=device)
"""
# A fresh, small parent per run: ru_maxrss of RUSAGE_CHILDREN then holds the tool's own peak (the largest of its
# processes), not the peak of a big parent it was forked from, which Linux carries across exec.
RUSAGE_WRAPPER = """import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{usage.ru_maxrss * 1024} {usage.ru_utime + usage.ru_stime}")
sys.exit(code)
"""
STARTUP = {"qtools": "import qtools.cli, qtools.convert", "llm-compressor": "from llmcompressor import model_free_ptq"}
# tests/test_fp8_oracles.py measures ~97% identical FP8 codes (llm-compressor rounds x / scale to bf16 first);
# INT4 round-to-nearest follows compressed-tensors' rule bit for bit (tests/test_w4a16_oracles.py).
MIN_CODE_AGREEMENT = 0.95
TARGET_RATIO = 10.0
TARGET_PEAK_GB = 1.5
TARGET_READ_FLOOR = 0.25


@dataclass
class Measured:
    """One run: seconds until its output is on disk (process, then `sync`), the peak RSS of its largest process
    (the kernel's figure) and the peak PSS of its whole process tree (sampled; shared pages counted once)."""

    seconds: float
    peak_rss: int
    peak_tree_pss: int
    cpu_seconds: float  # user + system time of the whole process tree: robust to other load on the machine


def bench_spec(layers: int, experts: int, vocab: int, shard_gb: float) -> SynthSpec:
    """Qwen3-Coder-480B-A35B's matrix shapes with `layers` layers of `experts` experts."""
    return SynthSpec(
        num_layers=layers,
        hidden_size=6144,
        moe_intermediate_size=2560,
        num_experts=experts,
        num_experts_per_tok=min(8, experts),
        num_attention_heads=96,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=vocab,
        shard_bytes=int(shard_gb * 1e9),
    )


def build_source(root: Path, spec: SynthSpec) -> Path:
    """The checkpoint for `spec` under `root`, reused when an earlier `--keep` run left the same one there."""
    path = root / f"bf16-{spec.num_layers}L-{spec.num_experts}E-{spec.shard_bytes // 10**6}MB"
    stamp = path / "tokenizer_config.json"
    if (path / "model.safetensors.index.json").exists() and stamp.exists():
        if json.loads(stamp.read_text()).get("synth_spec") == asdict(spec):
            return path
    shutil.rmtree(path, ignore_errors=True)
    print(f"building {path} ...", flush=True)
    return make_checkpoint(path, spec, seed=0)


def source_bytes(path: Path) -> int:
    return json.loads((path / "model.safetensors.index.json").read_text())["metadata"]["total_size"]


def drop_page_cache() -> None:
    """Drop the page cache (needs root), so the next run reads from disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as error:
        raise SystemExit(f"--cold: cannot drop the page cache ({error.strerror}); run without --cold") from error


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _pss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total


def run_measured(command: list[str], log: Path, threads: int | None, interval: float = 0.1) -> Measured:
    """Run `command` under the rusage wrapper with its output in `log`, sampling its memory; exit if it fails."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    rss_file = log.with_suffix(".maxrss")
    os.sync()  # no run pays for flushing an earlier run's writes
    started = time.perf_counter()
    with open(log, "wb") as sink:
        wrapper = subprocess.Popen(
            [sys.executable, "-c", RUSAGE_WRAPPER, str(rss_file), *command],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
        peak_pss = 0
        while wrapper.poll() is None:
            peak_pss = max(peak_pss, _pss(_descendants(wrapper.pid)))
            time.sleep(interval)
    os.sync()
    seconds = time.perf_counter() - started
    if wrapper.returncode != 0:
        sys.stderr.write(log.read_text(errors="replace")[-4000:])
        raise SystemExit(f"failed ({wrapper.returncode}): {' '.join(command)}")
    peak_rss, cpu_seconds = rss_file.read_text().split()
    return Measured(seconds, int(peak_rss), peak_pss, float(cpu_seconds))


def time_read(path: Path, cold: bool) -> float:
    """Seconds to read every shard once (the disk or page-cache floor any converter pays); warms the cache.

    Warm (the default), the faster of two passes: the first may still find pages on disk (a checkpoint built or
    reused a while ago, or pages the kernel's reclaim has dropped), and only the second is the page cache's floor.
    """

    def one_pass() -> float:
        started = time.perf_counter()
        for shard in sorted(path.glob("*.safetensors")):
            with open(shard, "rb", buffering=0) as handle:
                while handle.read(64 << 20):
                    pass
        return time.perf_counter() - started

    if cold:
        drop_page_cache()
        return one_pass()
    return min(one_pass(), one_pass())


def startup_seconds(tool: str) -> float:
    """Seconds to start Python and import the tool: part of every run's time, whatever the checkpoint size."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", STARTUP[tool]], check=True, capture_output=True)
    return time.perf_counter() - started


def qtools_command(source: Path, output: Path, args: argparse.Namespace) -> list[str]:
    recipe = args.recipe
    workers = str(args.workers)
    return [
        sys.executable,
        "-m",
        "qtools.cli",
        "convert",
        str(source),
        str(output),
        "--recipe",
        recipe,
        "--workers",
        workers,
        "--device",
        args.device,
    ]


def llmcompressor_command(source: Path, output: Path, args: argparse.Namespace) -> list[str]:
    scheme, kept = RECIPES[args.recipe]
    return [
        sys.executable,
        "-c",
        LLMC_SCRIPT,
        str(source),
        str(output),
        str(args.workers),
        args.device,
        json.dumps(kept),
        scheme,
    ]


def verify_output(path: Path) -> None:
    """`qtools verify --deep` (NaN codes included); exit when it finds a problem."""
    command = [sys.executable, "-m", "qtools.cli", "verify", "--deep", str(path)]
    verify = subprocess.run(command, capture_output=True, text=True)
    if verify.returncode != 0:
        raise SystemExit(f"qtools verify failed on {path}:\n{verify.stdout}{verify.stderr}")


def _codes(tensor: torch.Tensor, name: str) -> torch.Tensor | None:
    """The quantised codes a stored tensor holds (FP8 bytes, or INT4 values unpacked), None for other tensors."""
    if tensor.dtype == torch.float8_e4m3fn:
        return tensor.view(torch.uint8)
    if name.endswith(".weight_packed"):
        return unpack_int4(tensor)
    return None


def code_agreement(ours: Path, theirs: Path) -> float:
    """Fraction of quantised codes (FP8 or INT4) identical in both outputs, read one tensor at a time; exit when
    too low or when llm-compressor quantised a tensor qtools did not (or the other way round)."""
    ours_map = json.loads((ours / "model.safetensors.index.json").read_text())["weight_map"]
    theirs_map = json.loads((theirs / "model.safetensors.index.json").read_text())["weight_map"]
    same = total = 0
    for name, shard in sorted(ours_map.items()):
        with safe_open(ours / shard, "pt") as handle:
            mine = _codes(handle.get_tensor(name), name)
        if mine is None:
            continue
        if name not in theirs_map:
            raise SystemExit(f"llm-compressor's output has no {name}")
        with safe_open(theirs / theirs_map[name], "pt") as handle:
            other = _codes(handle.get_tensor(name), name)
        if other is None or other.shape != mine.shape:
            raise SystemExit(f"llm-compressor's {name} holds no codes of shape {list(mine.shape)}")
        same += (mine == other).sum().item()
        total += mine.numel()
    # hf-fp8 names its scales `weight_scale_inv`, compressed-tensors (llm-compressor's only format) `weight_scale`.
    ours_names = {name.removesuffix("_inv") if name.endswith(".weight_scale_inv") else name for name in ours_map}
    extra = {n for n in theirs_map if n.endswith((".weight_packed", ".weight_scale"))} - ours_names
    if extra:
        raise SystemExit(f"llm-compressor quantised tensors qtools kept, e.g. {sorted(extra)[0]}")
    agreement = same / max(total, 1)
    if agreement < MIN_CODE_AGREEMENT:
        raise SystemExit(f"only {agreement:.4f} of codes agree with llm-compressor's (< {MIN_CODE_AGREEMENT})")
    return agreement


def environment(device: str) -> dict:
    """Machine, versions and commit, for the table and the JSON."""

    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else "unknown"

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    packages = ("torch", "qtools-moe", "llmcompressor", "compressed-tensors", "transformers")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9, 1),
        "python": platform.python_version(),
        "versions": {name: package(name) for name in packages},
        "commit": git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "-uno") else ""),
    }


def row(name: str, layers: int, nbytes: int, seconds: float, measured: Measured | None = None, startup=None) -> dict:
    """One line of the report."""
    return {
        "name": name,
        "layers": layers,
        "source_bytes": nbytes,
        "seconds": seconds,
        "startup_seconds": startup,
        "gb_per_second": nbytes / 1e9 / seconds,
        "peak_rss": measured.peak_rss if measured else None,
        "peak_tree_pss": measured.peak_tree_pss if measured else None,
        "cpu_seconds": measured.cpu_seconds if measured else None,
        "gb_per_cpu_second": nbytes / 1e9 / measured.cpu_seconds if measured else None,
    }


def time_write(directory: Path, nbytes: int) -> float:
    """Seconds to write `nbytes` to a new file in `directory` (64 MiB writes, then fsync, then `sync`, as a run is
    timed): the floor any converter pays to put an output of that size on this filesystem."""
    chunk = os.urandom(1 << 20) * 64
    path = directory / "write-floor.bin"
    os.sync()
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as handle:
        left = nbytes
        while left > 0:
            left -= handle.write(chunk[: min(left, len(chunk))])
        os.fsync(handle.fileno())
    os.sync()
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def tree_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def benchmark(args: argparse.Namespace, workdir: Path) -> dict:
    """Build; `--repeats` times convert with both tools (checking the first repetition's outputs); convert twice
    the layers with qtools."""
    spec = bench_spec(args.layers, args.experts, args.vocab, args.shard_gb)
    source = build_source(workdir, spec)
    nbytes = source_bytes(source)
    floor = row("read only (floor)", args.layers, nbytes, time_read(source, args.cold))
    runs = [floor]
    startup = {tool: startup_seconds(tool) for tool in STARTUP}
    measured: dict[str, list[Measured]] = {"qtools": [], "llm-compressor": []}
    agreement = None
    dest = args.dest or workdir
    dest.mkdir(parents=True, exist_ok=True)
    write_floor = None
    for repetition in range(args.repeats):
        for tool, command in (("qtools", qtools_command), ("llm-compressor", llmcompressor_command)):
            output = dest / f"out-{tool}"
            shutil.rmtree(output, ignore_errors=True)
            if args.cold:
                drop_page_cache()
            print(f"repetition {repetition + 1}/{args.repeats}: {tool} on {source.name} ...", flush=True)
            result = run_measured(command(source, output, args), workdir / f"{tool}.log", args.threads)
            measured[tool].append(result)
            runs.append(row(f"{tool} #{repetition + 1}", args.layers, nbytes, result.seconds, result, startup[tool]))
        if agreement is None:
            verify_output(dest / "out-qtools")
            agreement = code_agreement(dest / "out-qtools", dest / "out-llm-compressor")
            output_bytes = tree_bytes(dest / "out-qtools")
        for tool in measured:
            shutil.rmtree(dest / f"out-{tool}")
        if write_floor is None:
            write_floor = row("write only (floor)", args.layers, nbytes, time_write(dest, output_bytes))
            runs.insert(1, write_floor)
    ours, theirs = measured["qtools"], measured["llm-compressor"]
    ratios = [t.seconds / o.seconds for o, t in zip(ours, theirs, strict=True)]
    summary = {
        "repeats": args.repeats,
        "code_agreement": agreement,
        "qtools_gb_per_second": _spread([nbytes / 1e9 / o.seconds for o in ours]),
        "llmcompressor_gb_per_second": _spread([nbytes / 1e9 / t.seconds for t in theirs]),
        # Throughput qtools / llm-compressor, each repetition's pair.
        "ratio": _spread(ratios),
        "ratio_met_every_repetition": all(r >= TARGET_RATIO for r in ratios),
        # What the ratio tends to on a full-size checkpoint, where start-up is negligible.
        "ratio_excluding_startup": _spread(
            [
                (t.seconds - startup["llm-compressor"]) / max(o.seconds - startup["qtools"], 1e-9)
                for o, t in zip(ours, theirs, strict=True)
            ]
        ),
        # The same comparison in work done (CPU seconds of each process tree): what other load cannot distort.
        "cpu_ratio": _spread([t.cpu_seconds / o.cpu_seconds for o, t in zip(ours, theirs, strict=True)]),
        "fraction_of_read_floor": _spread([nbytes / 1e9 / o.seconds / floor["gb_per_second"] for o in ours]),
        # The slower of reading the source and writing the output's bytes (with fsync) on this machine.
        "io_floor_seconds": max(floor["seconds"], write_floor["seconds"]),
        "fraction_of_io_floor": _spread([max(floor["seconds"], write_floor["seconds"]) / o.seconds for o in ours]),
        "output_bytes": output_bytes,
        "qtools_peak_bytes": max(max(o.peak_rss, o.peak_tree_pss) for o in ours),
        "llmcompressor_peak_bytes": max(max(t.peak_rss, t.peak_tree_pss) for t in theirs),
    }
    if not args.no_double:
        double = build_source(workdir, bench_spec(2 * args.layers, args.experts, args.vocab, args.shard_gb))
        output = dest / "out-qtools-double"
        shutil.rmtree(output, ignore_errors=True)
        time_read(double, args.cold)
        if args.cold:
            drop_page_cache()
        print(f"running qtools on {double.name} ...", flush=True)
        second = run_measured(qtools_command(double, output, args), workdir / "qtools-double.log", args.threads)
        verify_output(output)
        shutil.rmtree(output)
        runs.append(row("qtools", 2 * args.layers, source_bytes(double), second.seconds, second))
        summary["qtools_peak_bytes"] = max(summary["qtools_peak_bytes"], second.peak_rss, second.peak_tree_pss)
        summary["rss_growth_double_layers"] = second.peak_rss / max(o.peak_rss for o in ours)
    return {
        "environment": environment(args.device),
        "cache": "cold" if args.cold else "warm",
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "spec": asdict(spec),
        "runs": runs,
        "summary": summary,
    }


def _figures(spread: dict, unit: str = "x", digits: int = 2) -> str:
    return (
        f"median {spread['median']:.{digits}f}{unit}, min {spread['min']:.{digits}f}{unit}, "
        f"max {spread['max']:.{digits}f}{unit}"
    )


def report(results: dict, console: Console) -> None:
    """Print the table and the summary lines."""
    env, summary = results["environment"], results["summary"]
    settings = results["settings"]
    threads = settings["threads"] or "default"
    scheme = RECIPES[settings["recipe"]][0]
    title = (
        f"{settings['recipe']} (llm-compressor {scheme}), {results['cache']} page cache, device {env['device']} "
        f"({env['cpu']}, {env['cpus']} CPUs, {env['memory_gb']} GB RAM), workers {settings['workers']}, "
        f"threads {threads}"
    )
    table = Table(title=title)
    columns = ("run", "layers", "GB BF16", "seconds", "startup s", "GB/s", "CPU s", "peak RSS GB", "tree PSS GB")
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right")

    def gb(value: int | None) -> str:
        return "" if value is None else f"{value / 1e9:.2f}"

    for run in results["runs"]:
        startup = "" if run["startup_seconds"] is None else f"{run['startup_seconds']:.1f}"
        table.add_row(
            run["name"],
            str(run["layers"]),
            gb(run["source_bytes"]),
            f"{run['seconds']:.1f}",
            startup,
            f"{run['gb_per_second']:.3f}",
            "" if run["cpu_seconds"] is None else f"{run['cpu_seconds']:.1f}",
            gb(run["peak_rss"]),
            gb(run["peak_tree_pss"]),
        )
    versions = ", ".join(f"{name} {v}" for name, v in env["versions"].items())
    table.caption = f"{versions}; python {env['python']}; commit {env['commit']}; {env['date']}"
    console.print(table)
    met = "met" if summary["ratio_met_every_repetition"] else "MISSED"
    console.print(f"codes identical to llm-compressor's: {summary['code_agreement']:.4f}")
    console.print(
        f"throughput qtools / llm-compressor over {summary['repeats']} repetitions: {_figures(summary['ratio'])} "
        f"(target >= {TARGET_RATIO}x in every repetition: {met})"
    )
    console.print(f"  leaving out Python start-up and imports: {_figures(summary['ratio_excluding_startup'])}")
    console.print(f"  in CPU seconds (llm-compressor / qtools): {_figures(summary['cpu_ratio'])}")
    console.print(f"qtools GB/s: {_figures(summary['qtools_gb_per_second'], '', 3)}")
    console.print(f"llm-compressor GB/s: {_figures(summary['llmcompressor_gb_per_second'], '', 3)}")
    console.print(
        f"qtools at {_figures(summary['fraction_of_read_floor'], '', 3)} of the read floor's GB/s "
        f"(target >= {TARGET_READ_FLOOR})"
    )
    console.print(
        f"qtools at {_figures(summary['fraction_of_io_floor'], '', 3)} of the I/O floor "
        f"({summary['io_floor_seconds']:.1f} s: the slower of reading the source and writing "
        f"{summary['output_bytes'] / 1e9:.2f} GB with fsync)"
    )
    console.print(
        f"peak memory: qtools {summary['qtools_peak_bytes'] / 1e9:.2f} GB (target < {TARGET_PEAK_GB} GB), "
        f"llm-compressor {summary['llmcompressor_peak_bytes'] / 1e9:.2f} GB"
    )
    if "rss_growth_double_layers" in summary:
        console.print(f"qtools peak RSS, twice the layers / once: x{summary['rss_growth_double_layers']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (the memory check doubles them)")
    parser.add_argument("--experts", type=int, default=16, help="experts per layer")
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary size (embed_tokens and lm_head)")
    parser.add_argument("--shard-gb", type=float, default=2.0, help="shard size; real Qwen shards are 4-10 GB")
    parser.add_argument(
        "--workers", type=int, default=2, help="qtools --workers and model_free_ptq max_workers (default: 2)"
    )
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both tools (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for both tools")
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="what both tools write (default: the FP8 recipe of --format); w4a16-rtn compares with llm-compressor's "
        "W4A16 scheme",
    )
    parser.add_argument(
        "--format", choices=sorted(FORMAT_RECIPES), default="compressed-tensors", help="FP8 output format"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of both tools (default: 3)")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before every run (needs root)")
    parser.add_argument("--no-double", action="store_true", help="skip the qtools run on twice the layers")
    parser.add_argument("--workdir", type=Path, help="where checkpoints go (default: a new directory in /tmp)")
    parser.add_argument(
        "--dest",
        type=Path,
        help="where both tools write their outputs (default: the workdir; /dev/shm takes the disk out)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the workdir; its checkpoints are reused next time")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    args.recipe = args.recipe or FORMAT_RECIPES[args.format]
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="qtools-bench-convert-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = benchmark(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(results, Console())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
