"""Wire size at real scale: a 7B LLaMA's LoRA adapter on the wire, against the full model's bytes.

Computed, nothing trained: LLaMA-2-7B's architecture (``LlamaConfig`` defaults: 32 layers,
hidden 4096, MLP 11008, vocabulary 32000) is built on PyTorch's ``meta`` device (shapes, no
memory), its parameters counted, and LoRA (r 16 on ``q_proj`` and ``v_proj``) applied with
PEFT; the adapter's names and shapes are those fedlora sends (PEFT's adapter state dict, as
:func:`fedlora.adapters.adapter_state`). Its tensors, made real as zeros of their shapes, are
packed by :func:`fedlora.adapters.pack_adapter` --
the exact bytes fedlora puts in a message -- as float32 and as bfloat16:

* **plain LoRA**: a site receives the global adapter (``A`` and ``B``) and sends back both;
* **FFA-LoRA**: it receives the same and sends back only ``B``
  (:func:`fedlora.lora_factors.trained_state`; ``A`` is frozen and shared).

Per site and round: the adapter down (instruction) and up (reply); a message's other fields
(the run config as JSON, a few scalars) add the ``overhead`` bytes once per message. The full
model's bytes are its parameter count times 2 (bfloat16, as the 7B checkpoints ship) and 4
(float32). The bfloat16 rows are computed only: fedlora's wire keeps each tensor's dtype and
its adapters are float32 (``--bf16`` autocasts the computation, the LoRA weights stay float32).

    python bench/wire_size.py [--rank 16] [--json bench-out/wire.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from bench_common import emit_result
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from transformers import LlamaConfig, LlamaForCausalLM

from fedlora.adapters import pack_adapter
from fedlora.config import RunConfig
from fedlora.lora_factors import trained_state


def _adapter_and_model_size(rank: int, targets: list[str]) -> tuple[dict[str, torch.Size], int]:
    """The LoRA adapter's tensor shapes and the base model's parameter count (7B LLaMA)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig())
        parameters = sum(p.numel() for p in model.parameters())
        peft = get_peft_model(
            model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, bias="none")
        )
        shapes = {name: t.shape for name, t in get_peft_model_state_dict(peft).items()}
    return shapes, parameters


def _zeros(shapes: dict[str, torch.Size], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(shape, dtype=dtype) for name, shape in shapes.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    shapes, parameters = _adapter_and_model_size(args.rank, args.targets.split(","))
    overhead = len(json.dumps(RunConfig().to_flat(), sort_keys=True))
    full = {"bf16": parameters * 2, "fp32": parameters * 4}
    rows: list[dict[str, Any]] = []
    for method in ("plain LoRA", "FFA-LoRA"):
        for wire, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
            state = _zeros(shapes, dtype)
            sent = trained_state(state) if method == "FFA-LoRA" else state
            down = len(pack_adapter(state)) + overhead
            up = len(pack_adapter(sent)) + overhead
            rows.append(
                {
                    "method": method,
                    "wire": wire,
                    "down-bytes": down,
                    "up-bytes": up,
                    "up-share-of-bf16-model": up / full["bf16"],
                    "round-share-of-bf16-model": (up + down) / full["bf16"],
                    "round-share-of-fp32-model": (up + down) / full["fp32"],
                }
            )
    result = {
        "model": "LLaMA-2-7B architecture (LlamaConfig defaults)",
        "parameters": parameters,
        "adapter-values": sum(s.numel() for s in shapes.values()),
        "rank": args.rank,
        "targets": args.targets,
        "message-overhead-bytes": overhead,
        "rows": rows,
    }
    for row in rows:
        print(
            f"{row['method']:10} {row['wire']}  down {row['down-bytes'] / 1e6:7.2f} MB  "
            f"up {row['up-bytes'] / 1e6:7.2f} MB  up/model(bf16) "
            f"{100 * row['up-share-of-bf16-model']:.3f}%  round/model(bf16) "
            f"{100 * row['round-share-of-bf16-model']:.3f}%  round/model(fp32) "
            f"{100 * row['round-share-of-fp32-model']:.3f}%"
        )
    emit_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
