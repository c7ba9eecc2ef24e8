"""Evaluation on the test set, sharded over workers: each sample counted once, totals summed over the group."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from absa_cli.config import EvalConfig
from absa_cli.data import ImageDataset
from absa_cli.dist import DistContext
from absa_cli.worker.accel import Accel
from absa_cli.worker.adversarial import robust_accuracy


@dataclass(frozen=True)
class EvalStats:
    samples: int
    loss: float
    accuracy: float
    fgsm_accuracy: float | None = None  # robust accuracy at eval.adversarial_eps, when that is > 0


def evaluate(model: torch.nn.Module, test_set: ImageDataset, ctx: DistContext, accel: Accel, device: torch.device,
             config: EvalConfig) -> EvalStats:
    """Loss and accuracy over the whole test set, this rank's shard of it reduced over the group; with
    ``eval.adversarial_eps`` > 0 also the accuracy on FGSM examples of the test set (robust accuracy)."""
    model.eval()
    eps = config.adversarial_eps
    spec = test_set.spec
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct, samples, fgsm correct
    for batch in torch.split(ctx.shard(torch.arange(len(test_set))), config.batch_size):
        inputs, labels = test_set.get_batch(batch, None)
        inputs, labels = accel.inputs(inputs.to(device)), labels.to(device)
        with torch.no_grad(), accel.autocast(accel.amp_dtype):
            logits = model(inputs)
            totals[0] += F.cross_entropy(logits, labels, reduction="sum")
            totals[1] += (logits.argmax(dim=1) == labels).sum()
            totals[2] += len(batch)
        if eps > 0:  # needs input gradients: outside no_grad
            with accel.autocast(accel.amp_dtype):
                accuracy = robust_accuracy(model, [(inputs, labels)], eps, spec.mean, spec.std)
            totals[3] += accuracy * len(batch)
    ctx.all_reduce_sum([totals])
    loss_sum, num_correct, num_samples, fgsm_correct = totals.tolist()
    count = max(num_samples, 1)
    return EvalStats(samples=int(num_samples), loss=loss_sum / count, accuracy=num_correct / count,
                     fgsm_accuracy=fgsm_correct / count if eps > 0 else None)
