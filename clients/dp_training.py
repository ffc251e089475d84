"""DP-SGD on the adapter parameters with Opacus: Poisson sampling, per-sample clipping, noise.

The model is wrapped by Opacus's ``PrivacyEngine.make_private`` for exactly one local round and
unwrapped afterwards, so the process-cached PEFT model never keeps Opacus hooks.

Two clipping modes compute the same objective (per-sequence mean loss over the target tokens,
then the mean over the batch) and the same clipped, noised gradient:

* ``hooks``: per-sample gradients materialised by Opacus's hooks, clipped by the optimizer;
* ``ghost``: Opacus's ghost clipping; the loss **must** come from the criterion Opacus wraps,
  called with ``shape=(B, T)`` for token-level losses. A loss computed through the model's
  ``labels=`` argument would train without any clipping and without any error, so the model is
  never given labels here.

Sampling is Poisson (each record joins a step independently with probability ``q``), so a step
can have an empty batch: it is still a DP step (noise only), taken and accounted.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from peft import PeftModel
from torch.utils.data import DataLoader

from fedlora.clients.proximal import ProximalTerm, proximal_term
from fedlora.clients.training import TrainResult, make_optimizer
from fedlora.config import DpMode, RunConfig, Task
from fedlora.data import IGNORE_INDEX, TokenizedDataset, collate
from fedlora.device import autocast
from fedlora.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DpSettings:
    """The DP-SGD parameters of one local round."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    mode: DpMode = "hooks"
    secure_rng: bool = False
    seed: int | None = None
    """Fixes sampling and noise for tests and benchmarks only; never set from a run config.

    Left ``None`` (always, in the product), both come from OS entropy: were they derivable
    from the run config, the coordinator could replay the noise and subtract it, or learn
    which records each step sampled, and the guarantee would be void against it."""

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise ConfigError(f"noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"max grad norm must be > 0, got {self.max_grad_norm}")
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, task: Task) -> torch.Tensor:
    """Loss of each example: token-mean cross-entropy over targets (SFT) or cross-entropy."""
    if task == "classification":
        return F.cross_entropy(logits.float(), labels, reduction="none")
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    token_loss = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shifted_labels.shape)
    targets = (shifted_labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return token_loss.sum(dim=1) / targets


def _ghost_loss(criterion: Any, logits: torch.Tensor, labels: torch.Tensor, task: Task) -> Any:
    if task == "classification":
        return criterion(logits.float(), labels)
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    batch, length = shifted_labels.shape
    return criterion(
        shifted_logits.reshape(batch * length, -1),
        shifted_labels.reshape(batch * length),
        shape=(batch, length),
    )


def _entropy_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)


def _csprng_available() -> bool:
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        return False
    return True


def _poisson_batches(
    records: int, settings: DpSettings, generator: torch.Generator
) -> Iterator[list[int]]:
    sampler = UniformWithReplacementSampler(
        num_samples=records,
        sample_rate=settings.sample_rate,
        generator=generator,
        steps=settings.steps,
    )
    yield from sampler


def dp_train_locally(
    model: PeftModel,
    dataset: TokenizedDataset,
    *,
    config: RunConfig,
    settings: DpSettings,
    pad_id: int,
    device: torch.device,
    bf16: bool,
) -> TrainResult:
    """Run ``settings.steps`` DP-SGD steps on ``model``'s trainable (adapter) parameters.

    Parameters
    ----------
    model
        The PEFT model holding the global adapter; left unwrapped and in eval mode.
    dataset
        The site's tokenised training split (the records the guarantee is about).
    config
        Optimizer, learning rate and task.
    settings
        σ, C, the Poisson rate, the step count, hooks or ghost, secure RNG.
    pad_id, device, bf16
        Padding id, where to train, whether to autocast to bfloat16.

    Returns
    -------
    TrainResult
        Mean loss over the non-empty steps, the steps taken (empty ones included) and the
        number of records.
    """
    if not len(dataset):
        raise ConfigError("cannot train with DP on an empty dataset")
    model.to(device)
    model.train()
    engine, noise_seed, sample_seed = _engine(settings)
    noise_generator = None
    if noise_seed is not None:
        noise_generator = torch.Generator(device=device).manual_seed(noise_seed)
    optimizer = make_optimizer(model, config)
    proximal = proximal_term(model, config)
    # make_private only reads the loader's length and dataset; batches come from our sampler.
    placeholder = DataLoader(dataset, batch_size=config.batch_size)
    private = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX),
        data_loader=placeholder,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        poisson_sampling=False,
        noise_generator=noise_generator,
        grad_sample_mode=settings.mode,
    )
    dp_model, dp_optimizer = private[0], private[1]
    criterion = private[2] if settings.mode == "ghost" else None
    dp_model.forbid_grad_accumulation()
    # Average by the expected batch q·N, the normalisation the accountant's sensitivity assumes.
    dp_optimizer.expected_batch_size = settings.sample_rate * len(dataset)
    if settings.secure_rng and not engine.secure_mode:
        dp_optimizer.secure_mode = True
    trainable = [p for p in model.parameters() if p.requires_grad]
    sampling = torch.Generator().manual_seed(sample_seed)
    losses: list[float] = []
    try:
        for indices in _poisson_batches(len(dataset), settings, sampling):
            dp_optimizer.zero_grad(set_to_none=True)
            if not indices:
                _empty_step(trainable, settings.mode)
                _private_step(dp_optimizer, proximal)
                continue
            batch = collate([dataset[i] for i in indices], pad_id=pad_id, task=config.task)
            labels = batch.pop("labels").to(device)
            inputs = {key: value.to(device) for key, value in batch.items()}
            with autocast(device, bf16):
                logits = dp_model(**inputs).logits
            if criterion is not None:
                loss = _ghost_loss(criterion, logits, labels, config.task)
            else:
                loss = per_sample_loss(logits, labels, config.task).mean()
            loss.backward()
            _private_step(dp_optimizer, proximal)
            losses.append(float(loss.detach()))
    finally:
        dp_optimizer.zero_grad(set_to_none=True)
        dp_model._close()
    model.eval()
    mean_loss = sum(losses) / len(losses) if losses else math.nan
    return TrainResult(loss=mean_loss, steps=settings.steps, num_examples=len(dataset))


def _private_step(optimizer: DPOptimizer, proximal: ProximalTerm | None) -> None:
    """Opacus's step, with FedProx's gradient added after clipping and noise (no privacy cost)."""
    if proximal is None:
        optimizer.step()
        return
    if optimizer.pre_step():
        proximal.add_gradient()
        optimizer.original_optimizer.step()


def _engine(settings: DpSettings) -> tuple[PrivacyEngine, int | None, int]:
    """The privacy engine and the noise / sampling seeds for one round."""
    if settings.seed is not None:
        return PrivacyEngine(secure_mode=False), settings.seed, settings.seed + 1
    if not settings.secure_rng:
        return PrivacyEngine(secure_mode=False), _entropy_seed(), _entropy_seed()
    if _csprng_available():
        return PrivacyEngine(secure_mode=True), None, _entropy_seed()
    logger.warning(
        "secure-rng: torchcsprng is not installed; noise and sampling are seeded from OS "
        "entropy, with Opacus's floating-point-attack-resistant noise"
    )
    return PrivacyEngine(secure_mode=False), _entropy_seed(), _entropy_seed()


def _empty_step(trainable: Sequence[torch.nn.Parameter], mode: DpMode) -> None:
    """Make an empty Poisson batch a noise-only step: no sample contributes a gradient."""
    for param in trainable:
        if mode == "ghost":
            param.grad = torch.zeros_like(param)
        else:
            empty = torch.zeros((0, *param.shape), dtype=param.dtype, device=param.device)
            param.grad_sample = empty  # type: ignore[attr-defined]
