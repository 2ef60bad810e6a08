"""GPTQ W4A16 end to end: qtools (each coverage mode, and round-to-nearest) against llm-compressor's `oneshot`.

Both tools in one run, on the same checkpoints, the same calibration token ids and the same held-out tokens:

- the committed toy (models/toy-qwen3-coder): calibration from the training split of its standard-library code,
  `--seeds` calibration seeds (the seed moves KL as much as the tool does: mean and spread are reported), held-out
  windows from the held-out split (disjoint files, as tests/test_gptq_oracles.py builds them);
- a synthetic Qwen3-MoE with bigger shapes (default hidden 2048, 32 experts of width 768, top-8, 2 layers: the
  issue's), random calibration and held-out token ids (different seeds).

Every conversion runs in its own subprocess under a small rusage wrapper (scripts/bench_convert.py's), so wall
time, CPU seconds of the process tree and peak RSS belong to that tool alone. qtools: `convert_gptq` with the
`w4a16-gptq` recipe per coverage mode, `convert_checkpoint` with `w4a16-rtn`. llm-compressor: `oneshot` with
`GPTQModifier(scheme="W4A16")` (group 128, its defaults: all experts calibrated on all tokens, dampening 0.01,
static act-order, block 128), the model loaded in bfloat16, the same modules kept BF16 as our recipe (attention,
router, lm_head), calibration given as a dataset of the same token ids. Every output is checked first: it must
load in `qtools.runtime` as compressed-tensors pack-quantized (llm-compressor's output loads as written, no
conversion step). Then, in float32 on the held-out tokens: KL(BF16 || quantised) per token (mean and p99) and
top-1 agreement. Prints a Markdown table; `--json` writes everything.

    python scripts/bench_gptq.py --json bench-gptq.json
    python scripts/bench_gptq.py --quick            # tiny sizes, a minute or two: for development
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from bench_convert import environment, run_measured

from qtools.runtime import load_model
from qtools.testing.synth import SynthSpec, make_checkpoint

REPO = Path(__file__).resolve().parent.parent
TOY = REPO / "models" / "toy-qwen3-coder"
MODES = ("routed", "all-tokens", "blend")
TARGET_SPEED = 5.0
TARGET_RSS = 0.5
TARGET_KL_VS_RTN = 0.5

# The child scripts: argv = calibration ids (.pt), source, destination, then a tool-specific setting.
QTOOLS_GPTQ = """import json, sys, time, torch
from qtools.calibration import CalibrationSet
from qtools.gptq import GPTQHooks, convert_gptq
from qtools.recipe import Recipe, load_recipe
ids_path, src, dst, coverage, phases_path = sys.argv[1:]
ids = torch.load(ids_path)
raw = load_recipe("w4a16-gptq").model_dump(exclude={"block_size", "scale_dtype"})
recipe = Recipe.model_validate({**raw, "coverage": coverage})
phases, current = [], {}
def start(layer, phase, units):
    close()
    current.update(layer=layer, phase=phase, started=time.perf_counter())
def close(*_):
    if current:
        started = current.pop("started")
        phases.append({**current, "seconds": time.perf_counter() - started})
        current.clear()
hooks = GPTQHooks(on_layer_start=start, on_layer_done=close, on_warning=lambda message: print(message))
calibration = CalibrationSet(ids, "bench", "bench token ids")
summary = convert_gptq(src, dst, recipe, calibration, hooks=hooks)
json.dump({"phases": phases, "experts_fallback": summary.experts_fallback}, open(phases_path, "w"))
"""
QTOOLS_RTN = """import sys
from qtools.convert import convert_checkpoint
from qtools.recipe import load_recipe
convert_checkpoint(sys.argv[2], sys.argv[3], load_recipe("w4a16-rtn"))
"""
LLMC_GPTQ = """import sys, torch, transformers
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
ids_path, src, dst = sys.argv[1:4]
ids = torch.load(ids_path)
model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
recipe = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head", "re:.*mlp[.]gate$", "re:.*self_attn.*"])
oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=ids.shape[0],
        max_seq_length=ids.shape[1], output_dir=dst)
"""


def code_windows(heldout: bool, samples: int, length: int, seed: int) -> torch.Tensor:
    """int64 [samples, length]: windows of the toy's standard-library code, training or held-out split (the windows
    tests/test_gptq_oracles.py uses)."""
    import tokenizers

    from qtools.testing.code_windows import code_windows as windows

    return windows(tokenizers.Tokenizer.from_file(str(TOY / "tokenizer.json")), heldout, samples, length, seed)


def random_ids(vocab: int, samples: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (samples, length), generator=torch.Generator().manual_seed(seed))


class Evaluator:
    """KL(BF16 || quantised) and top-1 agreement on fixed held-out ids, float32, through qtools.runtime."""

    def __init__(self, reference: Path, ids: torch.Tensor, batch: int = 4):
        self.ids, self.batch = ids, batch
        self.reference = self._logprobs(reference)

    def _logprobs(self, path: Path) -> torch.Tensor:
        model = load_model(path, dtype=torch.float32)
        with torch.no_grad():
            return torch.cat([model(chunk).log_softmax(-1) for chunk in self.ids.split(self.batch)])

    def __call__(self, path: Path) -> dict:
        logprobs = self._logprobs(path)  # fails unless the output loads as pack-quantized
        kl = (self.reference.exp() * (self.reference - logprobs)).sum(-1).flatten()
        top1 = (self.reference.argmax(-1) == logprobs.argmax(-1)).float().mean()
        return {"kl_mean": float(kl.mean()), "kl_p99": float(kl.quantile(0.99)), "top1": float(top1)}


def check_format(path: Path) -> None:
    config = json.loads((path / "config.json").read_text()).get("quantization_config", {})
    formats = {group.get("format") for group in config.get("config_groups", {}).values()} | {config.get("format")}
    if config.get("quant_method") != "compressed-tensors" or "pack-quantized" not in formats:
        raise SystemExit(f"{path}: not a compressed-tensors pack-quantized checkpoint: {config}")


def convert(tool: str, ids_path: Path, source: Path, out: Path, workdir: Path, threads: int | None) -> dict:
    """One conversion in its own measured subprocess; returns its measurements (and phases, for qtools GPTQ)."""
    shutil.rmtree(out, ignore_errors=True)
    phases = out.with_suffix(".phases.json")
    if tool == "llm-compressor":
        command = [sys.executable, "-c", LLMC_GPTQ, str(ids_path), str(source), str(out)]
    elif tool == "rtn":
        command = [sys.executable, "-c", QTOOLS_RTN, str(ids_path), str(source), str(out)]
    else:
        command = [sys.executable, "-c", QTOOLS_GPTQ, str(ids_path), str(source), str(out), tool, str(phases)]
    print(f"  {tool} on {source.name} ...", flush=True)
    measured = run_measured(command, workdir / f"{out.name}.log", threads)
    check_format(out)
    result = {"seconds": measured.seconds, "cpu_seconds": measured.cpu_seconds, "peak_rss": measured.peak_rss}
    result["peak_tree_pss"] = measured.peak_tree_pss
    if phases.exists():
        result.update(json.loads(phases.read_text()))
    return result


def run_model(name: str, source: Path, calibrations: list[torch.Tensor], held_out: torch.Tensor, args, workdir):
    """Every tool on `source`, once per calibration set (RTN once: it uses no data); each output evaluated."""
    evaluate = Evaluator(source, held_out)
    runs: dict[str, list[dict]] = {}
    tools = [*args.modes, "llm-compressor"]
    for seed, ids in enumerate(calibrations):
        ids_path = workdir / f"{name}-calib-{seed}.pt"
        torch.save(ids, ids_path)
        for tool in tools + (["rtn"] if seed == 0 else []):
            out = workdir / f"{name}-{tool}-{seed}"
            result = convert(tool, ids_path, source, out, workdir, args.threads)
            result.update(evaluate(out), seed=seed)
            runs.setdefault(tool, []).append(result)
            shutil.rmtree(out)
    return {"calibration_shape": list(calibrations[0].shape), "held_out_shape": list(held_out.shape), "runs": runs}


def aggregate(model: dict) -> dict:
    """Per tool: mean (and spread over seeds) of every figure; ratios and targets against llm-compressor."""
    table = {}
    for tool, runs in model["runs"].items():
        row = {}
        for key in ("seconds", "cpu_seconds", "peak_rss", "kl_mean", "kl_p99", "top1"):
            values = [run[key] for run in runs]
            row[key] = statistics.fmean(values)
            row[key + "_min"], row[key + "_max"] = min(values), max(values)
            row[key + "_stdev"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table[tool] = row
    peer, rtn = table["llm-compressor"], table["rtn"]
    for tool, row in table.items():
        row["speed_ratio"] = peer["seconds"] / row["seconds"]
        row["cpu_ratio"] = peer["cpu_seconds"] / row["cpu_seconds"]
        row["rss_ratio"] = row["peak_rss"] / peer["peak_rss"]
        row["kl_vs_peer"] = row["kl_mean"] / peer["kl_mean"]
        row["kl_vs_rtn"] = row["kl_mean"] / rtn["kl_mean"]
        if tool in MODES:
            row["targets"] = {
                f"speed >= {TARGET_SPEED}x": row["speed_ratio"] >= TARGET_SPEED,
                f"peak RSS <= {TARGET_RSS} x peer": row["rss_ratio"] <= TARGET_RSS,
                "KL mean <= peer": row["kl_mean"] <= peer["kl_mean"],
                f"KL mean <= {TARGET_KL_VS_RTN} x RTN": row["kl_vs_rtn"] <= TARGET_KL_VS_RTN,
            }
    return table


def markdown(name: str, model: dict, table: dict) -> str:
    seeds = len(model["runs"]["llm-compressor"])
    calib = "x".join(map(str, model["calibration_shape"]))
    held = "x".join(map(str, model["held_out_shape"]))
    lines = [
        f"**{name}**: calibration {calib} tokens x {seeds} seed(s), held-out {held} tokens; mean over seeds "
        "(KL: min-max in brackets); ratios against llm-compressor",
        "",
        "| tool | wall s | CPU s | peak RSS GiB | KL mean | KL p99 | top-1 | speed x | CPU x | RSS / peer | KL / RTN |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for tool, row in table.items():
        label = {"rtn": "qtools RTN", "llm-compressor": "llm-compressor GPTQ"}.get(tool, f"qtools GPTQ {tool}")
        kl = f"{row['kl_mean']:.3e}"
        if row["kl_mean_max"] > row["kl_mean_min"]:
            kl += f" [{row['kl_mean_min']:.2e}-{row['kl_mean_max']:.2e}]"
        lines.append(
            f"| {label} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {row['peak_rss'] / 2**30:.2f} | {kl} | "
            f"{row['kl_p99']:.3e} | {row['top1']:.2%} | {row['speed_ratio']:.2f} | {row['cpu_ratio']:.2f} | "
            f"{row['rss_ratio']:.2f} | {row['kl_vs_rtn']:.2f} |"
        )
    lines.append("")
    for tool, row in table.items():
        if "targets" in row:
            met = ", ".join(f"{target}: {'met' if ok else 'MISSED'}" for target, ok in row["targets"].items())
            lines.append(f"- qtools {tool}: {met}")
    return "\n".join(lines)


def phase_profile(model: dict) -> dict:
    """Seconds per layer phase (calibrate, quantise, propagate), mean over layers and seeds, per coverage mode."""
    profile = {}
    for tool in MODES:
        sums: dict[str, list[float]] = {}
        for run in model["runs"].get(tool, []):
            for phase in run.get("phases", []):
                sums.setdefault(phase["phase"], []).append(phase["seconds"])
        if sums:
            profile[tool] = {phase: statistics.fmean(values) for phase, values in sums.items()}
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes for development (overrides the sizes)")
    parser.add_argument("--seeds", type=int, default=3, help="toy calibration seeds (default 3)")
    parser.add_argument("--toy-samples", type=int, default=32, help="toy calibration sequences")
    parser.add_argument("--toy-seq-len", type=int, default=256)
    parser.add_argument("--toy-held-out", type=int, default=16, help="toy held-out sequences (of --toy-seq-len)")
    parser.add_argument("--hidden", type=int, default=2048, help="synthetic model: hidden size")
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--inter", type=int, default=768, help="synthetic model: expert width")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--synth-samples", type=int, default=64)
    parser.add_argument("--synth-seq-len", type=int, default=256)
    parser.add_argument("--synth-held-out", type=int, default=8)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="qtools coverage modes")
    parser.add_argument("--no-toy", action="store_true")
    parser.add_argument("--no-synth", action="store_true")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every tool (default: torch's choice)")
    parser.add_argument("--workdir", type=Path, help="default: a new directory in /tmp, removed at the end")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.toy_samples, args.toy_seq_len, args.toy_held_out = 2, 8, 128, 4
        args.hidden, args.experts, args.inter, args.top_k, args.layers = 256, 8, 128, 2, 2
        args.synth_samples, args.synth_seq_len, args.synth_held_out = 8, 128, 4
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gptq-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {
        "environment": environment("cpu") | {"load_average_start": os.getloadavg()},
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "models": {},
    }
    try:
        if not args.no_toy:
            print("toy model", flush=True)
            calibrations = [code_windows(False, args.toy_samples, args.toy_seq_len, s) for s in range(args.seeds)]
            held_out = code_windows(True, args.toy_held_out, args.toy_seq_len, seed=1)
            results["models"]["toy"] = run_model("toy", TOY, calibrations, held_out, args, workdir)
        if not args.no_synth:
            spec = SynthSpec(
                num_layers=args.layers,
                hidden_size=args.hidden,
                moe_intermediate_size=args.inter,
                num_experts=args.experts,
                num_experts_per_tok=args.top_k,
                num_attention_heads=max(1, args.hidden // 128),
                num_key_value_heads=max(1, args.hidden // 512),
                head_dim=128,
                vocab_size=4096,
                shard_bytes=1 << 30,
            )
            print(f"synthetic model {asdict(spec)}", flush=True)
            source = make_checkpoint(workdir / "synth-bf16", spec, seed=0)
            calibration = random_ids(spec.vocab_size, args.synth_samples, args.synth_seq_len, seed=0)
            held_out = random_ids(spec.vocab_size, args.synth_held_out, args.synth_seq_len, seed=1)
            results["models"]["synth"] = run_model("synth", source, [calibration], held_out, args, workdir)
            results["models"]["synth"]["spec"] = asdict(spec)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["environment"]["load_average_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - started
    env = results["environment"]
    versions = ", ".join(f"{name} {v}" for name, v in env["versions"].items())
    print(
        f"\n{env['cpu']}, {env['cpus']} CPUs, {env['memory_gb']} GB; {versions}; python {env['python']}; "
        f"commit {env['commit']}; {env['date']}; load average at start {env['load_average_start']}, at end "
        f"{env['load_average_end']}; total {results['total_seconds']:.0f} s\n"
    )
    for name, model in results["models"].items():
        model["table"] = aggregate(model)
        model["phase_profile"] = phase_profile(model)
        print(markdown(name, model, model["table"]))
        for tool, phases in model["phase_profile"].items():
            described = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in phases.items())
            print(f"- qtools {tool} per layer: {described}")
        print()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
