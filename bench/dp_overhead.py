"""Per-step cost of DP-SGD (Opacus hooks and ghost clipping) against plain AdamW, same workload.

Three variants of one local training step run in this one process, one after the other, on the
same model, the same batch and the same data:

(a) non-DP: ``fedlora.clients.training.train_locally`` -- the product's plain AdamW loop (loss
through
    the model's ``labels=``, the token mean over the batch);
(b) DP hooks: ``fedlora.clients.dp_training.dp_train_locally`` with ``mode="hooks"`` -- Opacus's
    per-sample gradients from module hooks, per-sample clipping and noise, then AdamW;
(c) DP ghost: the same with ``mode="ghost"`` -- Opacus's ghost clipping (per-sample gradient
    norms without per-sample gradients, then a second backward pass on the rescaled loss).

DP runs with σ = 1.0 and C = 1.0. Both DP modes use per-sequence mean losses, the non-DP loop
the HF token-mean loss: each is the product's real path, which is what is compared.

Same batch. Every step of every variant trains on the same B records of exactly T tokens: the
dataset holds exactly B SFT records whose prompt + response are longer than T, so tokenisation
truncates each to T tokens and ``collate`` pads nothing. The non-DP loop runs with batch size B
and ``local-epochs = steps`` (one full batch per epoch, so ``steps`` steps of all B records). The
DP loop runs with the Poisson rate q = 1.0: every record joins every step (Opacus's sampler keeps
a record when ``rand() < q``, always true for q = 1), so each DP step also holds all B records
and normalises by q·N = B. The script checks this on Opacus's sampler before timing. Fixing the
batch this way, rather than timing Poisson batches of random size, makes the ratio a cost per
step of identical work; it is not a privacy-meaningful setting (q = 1 gives no amplification),
and the timing does not depend on σ, C or q.

What is measured, the same way for every variant: the wall time of one training step, from the
end of one optimizer step to the end of the next (``torch.optim`` global step post-hook on the
AdamW that ``make_optimizer`` builds; Opacus's DP optimizer calls it once per DP step), so a
step covers batch assembly, forward, loss, backward, [DP: per-sample clipping and noise] and the
AdamW update. The first ``--warmup`` steps of every call are excluded. A call of ``--steps``
steps (``--large-steps`` for the larger model, whose steps take seconds on a CPU) is one run;
variants run in ABBA order (non-DP, hooks, ghost, ghost, hooks, non-DP, ...) to cancel slow
drift in machine load, and the adapter is reset to the same initial weights before every run.
The table reports, per model, the median over all timed steps of each variant and its ratio to
non-DP. The whole call per step (wrapping the model with Opacus's ``make_private`` and
unwrapping it, optimizer and loader set-up, warm-up steps included) is reported beside it: a
site pays that once per round.

Models: the ``tiny-llama`` preset, and a larger Llama built like it (same tiny tokenizer and
vocabulary, same head ratio, intermediate size 2 × hidden) with hidden size 512, 4 layers,
8 attention heads and 4 key-value heads. With ``--model smollm2-135m``: the cached real
SmolLM2-135M-Instruct (``fedlora assets fetch``; its own tokenizer), timed like the larger model
(``--large-steps``); ``--variants dp-hooks`` skips ghost clipping. All: SFT, LoRA r=8 (alpha 16)
on q_proj, v_proj.

Run from the repository root::

    .venv/bin/python bench/dp_overhead.py
    .venv/bin/python bench/dp_overhead.py --model smollm2-135m --variants dp-hooks
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from bench_common import add_output_arguments, emit_result  # this script's folder
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from peft import PeftModel
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import AutoModelForCausalLM

from fedlora.clients.dp_training import DpSettings, dp_train_locally
from fedlora.clients.training import TrainResult, train_locally
from fedlora.config import RunConfig
from fedlora.data import SftExample, TokenizedDataset, tokenize
from fedlora.models import (
    BASE_SEED,
    PRESETS,
    BaseModel,
    apply_lora,
    fingerprint,
    load_base_model,
)
from fedlora.tokenizer import PAD_ID, tiny_tokenizer

TARGET_HOOKS_RATIO = 1.15
VARIANTS = ("non-dp", "dp-hooks", "dp-ghost")
LARGE = "llama-h512-l4"
REAL = "smollm2-135m"
"""The cached SmolLM2-135M-Instruct (``fedlora assets fetch``), 134.5 M parameters."""
MODELS = ("tiny-llama", LARGE, REAL)
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
CPU = torch.device("cpu")

_TEXT = (
    "patient ward nurse doctor discharge admission bed clinic report shift care staff "
    "treatment follow-up observation medication dose morning evening night review team "
    "hospital record day week stable improved transferred scheduled notes visit the a of "
    "and to was after with for on in by two three four five"
)
"""Words the generated responses are drawn from (all in the tiny tokenizer's domain)."""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Median per-step time of DP-SGD (hooks, ghost) vs plain AdamW, same batch."
    )
    parser.add_argument(
        "--models",
        "--model",
        nargs="+",
        choices=MODELS,
        default=["tiny-llama", LARGE],
        help=f"default: tiny-llama {LARGE}; {REAL} needs `fedlora assets fetch`",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS[1:],
        default=list(VARIANTS[1:]),
        help="DP variants timed against non-DP (default: both)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="B: records per step")
    parser.add_argument("--seq-len", type=int, default=128, help="T: tokens per record")
    parser.add_argument("--steps", type=int, default=10, help="steps per run, tiny-llama")
    parser.add_argument(
        "--large-steps", type=int, default=6, help=f"steps per run, {LARGE}, {REAL}"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per run")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs per variant, in ABBA order (non-dp, hooks, ghost, ghost, hooks, non-dp, ...)",
    )
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    add_output_arguments(parser, verbose_help="let Opacus and peft warn", run_data=False)
    return parser.parse_args(argv)


def _quiet(verbose: bool) -> None:
    if verbose:
        return
    logging.getLogger("clients").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _large_llama(max_length: int) -> BaseModel:
    """A Llama like the ``tiny-llama`` preset, with hidden 512, 4 layers, 8 heads, 4 KV heads."""
    config = PRESETS["tiny-llama"].make_config()  # the preset's vocabulary and special ids
    config.update(
        {
            "hidden_size": 512,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "max_position_embeddings": 512,
            "head_dim": 512 // 8,
        }
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE_SEED)
        model = AutoModelForCausalLM.from_config(config)
    model.eval()
    tokenizer = tiny_tokenizer(min(max_length, 512))
    return BaseModel(model, tokenizer, "llama", fingerprint(model), ())


def _load(name: str, max_length: int) -> BaseModel:
    if name == LARGE:
        return _large_llama(max_length)
    return load_base_model(name, task="sft", max_length=max_length)


def _dataset(base: BaseModel, records: int, length: int) -> TokenizedDataset:
    """``records`` SFT records, each truncated to exactly ``length`` tokens (no padding)."""
    rng = random.Random(0)
    words = _TEXT.split()
    examples = [
        SftExample(
            f"### Instruction:\nSummarise the report of ward {index}.\n\n### Response:\n",
            " ".join(rng.choice(words) for _ in range(length * 2)) + ".",
        )
        for index in range(records)
    ]
    dataset = tokenize(examples, base.tokenizer, max_length=length)
    lengths = {len(item["input_ids"]) for item in dataset.items}
    if len(dataset) != records or lengths != {length}:
        raise RuntimeError(f"expected {records} records of {length} tokens, got {lengths}")
    return dataset


def _check_full_batches(records: int, steps: int) -> None:
    """Opacus's Poisson sampler at q = 1 yields every record at every step."""
    sampler = UniformWithReplacementSampler(
        num_samples=records,
        sample_rate=1.0,
        generator=torch.Generator().manual_seed(1),
        steps=steps,
    )
    sizes = [len(indices) for indices in sampler]
    if sizes != [records] * steps:
        raise RuntimeError(f"Poisson batches at q=1 are not full: {sizes}")


@contextmanager
def _step_clock() -> Iterator[list[float]]:
    """Timestamps of the end of every step of the plain (wrapped, for DP) optimizer."""
    stamps: list[float] = []

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        del args, kwargs
        if not isinstance(optimizer, DPOptimizer):
            stamps.append(time.perf_counter())

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield stamps
    finally:
        handle.remove()


@dataclass(frozen=True)
class Run:
    """One call of one variant: its timed steps, its whole-call time and its mean loss."""

    step_s: list[float]
    call_s: float
    loss: float


def _runner(
    variant: str, model: PeftModel, dataset: TokenizedDataset, config: RunConfig, seed: int
) -> Callable[[], TrainResult]:
    if variant == "non-dp":
        return lambda: train_locally(
            model, dataset, config=config, pad_id=PAD_ID, device=CPU, bf16=False, seed=seed
        )
    settings = DpSettings(
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=MAX_GRAD_NORM,
        sample_rate=1.0,
        steps=config.local_epochs,
        mode="hooks" if variant == "dp-hooks" else "ghost",
        seed=seed,
    )
    return lambda: dp_train_locally(
        model,
        dataset,
        config=config,
        settings=settings,
        pad_id=PAD_ID,
        device=CPU,
        bf16=False,
    )


def _run(
    variant: str,
    model: PeftModel,
    initial: dict[str, torch.Tensor],
    dataset: TokenizedDataset,
    config: RunConfig,
    warmup: int,
) -> Run:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in initial:
                param.copy_(initial[name])
                param.grad = None
    call = _runner(variant, model, dataset, config, seed=config.seed)
    with _step_clock() as stamps:
        started = time.perf_counter()
        result = call()
        call_s = time.perf_counter() - started
    steps = config.local_epochs
    if len(stamps) != steps or result.steps != steps:
        raise RuntimeError(f"{variant}: {len(stamps)} optimizer steps seen, {steps} expected")
    # stamps[k] ends step k+1; step k+1 (k >= 1) takes stamps[k] - stamps[k-1].
    timed = [stamps[k] - stamps[k - 1] for k in range(warmup, steps)]
    return Run(step_s=timed, call_s=call_s, loss=result.loss)


def _schedule(repeats: int, variants: tuple[str, ...] = VARIANTS) -> list[str]:
    """ABBA order over the variants: alternate forward and reversed, to cancel drift."""
    order: list[str] = []
    for index in range(repeats):
        order += list(variants) if index % 2 == 0 else list(reversed(variants))
    return order


def _summary(runs: list[Run], steps: int) -> dict[str, Any]:
    timed = [s for run in runs for s in run.step_s]
    return {
        "median-s": round(statistics.median(timed), 5),
        "run-medians-s": [round(statistics.median(run.step_s), 5) for run in runs],
        "steps-s": [[round(s, 5) for s in run.step_s] for run in runs],
        "timed-steps": len(timed),
        "call-s-per-step": round(statistics.median(run.call_s / steps for run in runs), 5),
        "call-s": [round(run.call_s, 3) for run in runs],
        "mean-loss": [round(run.loss, 5) for run in runs],
    }


def _variants(args: argparse.Namespace) -> tuple[str, ...]:
    """non-DP, then the DP variants asked for, in the module's order."""
    return tuple(v for v in VARIANTS if v == "non-dp" or v in args.variants)


def _steps(name: str, args: argparse.Namespace) -> int:
    return int(args.steps if name == "tiny-llama" else args.large_steps)


def _bench_model(name: str, args: argparse.Namespace, order: list[str]) -> dict[str, Any]:
    steps = _steps(name, args)
    _check_full_batches(args.batch_size, steps)
    base = _load(name, args.seq_len)
    config = RunConfig(
        task="sft",
        model=name,
        lr=args.lr,
        batch_size=args.batch_size,
        local_epochs=steps,
        max_steps=0,
        max_length=args.seq_len,
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=MAX_GRAD_NORM,
        dp_mode="hooks",
        device="cpu",
        bf16="off",
    )
    model = apply_lora(base, config)
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    dataset = _dataset(base, args.batch_size, args.seq_len)
    variants = _variants(args)
    runs: dict[str, list[Run]] = {variant: [] for variant in variants}
    for variant in order:
        runs[variant].append(_run(variant, model, initial, dataset, config, args.warmup))
    summaries = {variant: _summary(runs[variant], steps) for variant in variants}
    plain = summaries["non-dp"]["median-s"]
    plain_call = summaries["non-dp"]["call-s-per-step"]
    for variant in variants:
        summary = summaries[variant]
        summary["ratio"] = round(summary["median-s"] / plain, 4)
        summary["call-ratio"] = round(summary["call-s-per-step"] / plain_call, 4)
        # Repeat i of a variant against repeat i of non-DP (neighbours in the ABBA order): when
        # these disagree, machine load moved during the run more than the effect measured.
        summary["run-ratios"] = [
            round(mine / theirs, 4)
            for mine, theirs in zip(
                summary["run-medians-s"], summaries["non-dp"]["run-medians-s"], strict=True
            )
        ]
    hooks = summaries["dp-hooks"]["ratio"] if "dp-hooks" in summaries else None
    return {
        "model": name,
        "steps-per-run": steps,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable-params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "variants": summaries,
        "hooks-within-target": None if hooks is None else hooks <= TARGET_HOOKS_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1 or args.seq_len < 48:
        raise SystemExit(
            "--repeats and --batch-size must be >= 1, --seq-len >= 48 (the prompt is ~35 tokens)"
        )
    if not 1 <= args.warmup < min(args.steps, args.large_steps):
        raise SystemExit(
            "need 1 <= --warmup < --steps, --large-steps (a step is timed from the one before)"
        )
    _quiet(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    order = _schedule(args.repeats, _variants(args))
    started = time.monotonic()
    models = [_bench_model(name, args, order) for name in args.models]
    machine = (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, load average {load_before:.2f} at start"
    )
    result: dict[str, Any] = {
        "benchmark": "dp_overhead",
        "measured": (
            "median over all timed steps (steps warmup+1..steps of every run) of one training "
            "step's wall time, end of one optimizer step to the end of the next; ratio to the "
            "non-DP median of the same model; call-s-per-step: median whole call / steps "
            "(Opacus wrap and unwrap, set-up and warm-up steps included)"
        ),
        "task": "sft",
        "lora": "r=8 alpha=16 on q_proj,v_proj",
        "batch-size": args.batch_size,
        "seq-len": args.seq_len,
        "steps": {name: _steps(name, args) for name in args.models},
        "warmup": args.warmup,
        "repeats": args.repeats,
        "noise-multiplier": NOISE_MULTIPLIER,
        "max-grad-norm": MAX_GRAD_NORM,
        "sample-rate": 1.0,
        "order": order,
        "machine": machine,
        "total-s": round(time.monotonic() - started, 1),
        "models": models,
        "target-hooks-ratio": TARGET_HOOKS_RATIO,
        "within-target": all(m["hooks-within-target"] is not False for m in models),
    }

    per_model = ", ".join(f"{m['model']} {m['steps-per-run']}" for m in models)
    print(
        f"\nDP overhead per step: DP-SGD (σ={NOISE_MULTIPLIER}, C={MAX_GRAD_NORM}) vs plain "
        f"AdamW -- sft, LoRA r=8 on q_proj,v_proj, batch {args.batch_size} × {args.seq_len} "
        f"tokens, steps per run {per_model} ({args.warmup} warm-up each), run order "
        f"{' '.join(order)}; {machine}"
    )
    print(f"measured: {result['measured']}")
    header = (
        f"{'model':<14}  {'variant':<9}  {'params':>7}  {'steps':>5}  {'median s/step':>13}  "
        f"{'ratio':>6}  {'call s/step':>11}  {'call ratio':>10}  target / verdict"
    )
    print(header)
    for model in models:
        for variant in model["variants"]:
            summary = model["variants"][variant]
            verdict = ""
            if variant == "dp-hooks":
                within = summary["ratio"] <= TARGET_HOOKS_RATIO
                verdict = f"<= {TARGET_HOOKS_RATIO:.2f}: {'within' if within else 'ABOVE'}"
            print(
                f"{model['model']:<14}  {variant:<9}  {model['params'] / 1e6:>6.2f}M  "
                f"{summary['timed-steps']:>5}  {summary['median-s']:>13.4f}  "
                f"{summary['ratio']:>5.3f}x  {summary['call-s-per-step']:>11.4f}  "
                f"{summary['call-ratio']:>9.3f}x  {verdict}"
            )
    for model in models:
        medians = "  ".join(
            f"{variant} {model['variants'][variant]['run-medians-s']}"
            for variant in model["variants"]
        )
        print(f"per-run medians, {model['model']}: {medians}")
        ratios = "  ".join(
            f"{variant} {model['variants'][variant]['run-ratios']}"
            for variant in list(model["variants"])[1:]
        )
        print(f"per-repeat ratios to non-DP, {model['model']}: {ratios}")
    emit_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
