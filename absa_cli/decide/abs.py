"""ABS (``policy.name=abs``) and ABSA (``policy.name=absa``): grow the batch as the curvature drops.

The ABS rule, per epoch (one ``observe`` call, so at most one growth per epoch), as the authors' reference code
behaves (docs/policy.md states it with every difference):

1. the first finite probe's λ becomes λ_ref (it cannot grow the batch by itself);
2. a probe with λ ≤ λ_ref / ``policy.eig_ratio`` counts as a drop; ``policy.confirm`` drops in a row grow the
   batch by ``policy.growth`` (cause ``curvature``) and set λ_ref = λ (a probe without the drop resets the count;
   an epoch without a probe leaves it as it is). With ``policy.recheck`` = R > 0 (not the paper's), a probe that
   shows the drop is probed again at once on R new sample draws (``wants_recheck``); it counts as a drop only if
   every reading shows it, and λ_ref becomes the readings' mean (a non-finite recheck: the epoch counts as not
   probed);
3. otherwise, after ``policy.duration`` epochs without growth, grow anyway (cause ``fallback``): **λ_ref is left
   as it is**, so the next curvature growth still needs λ to halve from the last curvature-set reference;
4. never beyond ``policy.max_global_batch``: a growth that would overshoot is clamped to it; at the cap probing
   stops and the adversarial fraction is 0; after the last epoch nothing grows, and the last epoch is not probed
   (neither could change anything);
5. the adversarial fraction starts at ``policy.adv_ratio``, is divided by ``policy.growth`` at each growth, and is
   0 once floor(``policy.adv_stop_frac`` × epochs) epochs are done;
6. after a growth the LR ramps linearly from its value before the growth to the new one over
   ``policy.lr_ramp_epochs`` epochs (0: the reference's immediate jump).

A non-finite λ (a diverged probe) is ignored, as if no probe had run.
"""

from __future__ import annotations

import dataclasses
import math

from absa_cli.config import OptimConfig, RunConfig
from absa_cli.decide.geometry import scale_lr
from absa_cli.decide.policy import (CURVATURE, FALLBACK, BasePolicy, Decision, EpochMeasurements, PolicyState,
                                    adv_stop_epoch)
from absa_cli.decide.schedule import lr_at
from absa_cli.errors import counted


class AdaptivePolicy(BasePolicy):
    """ABS (``policy.name=abs``) and ABSA (``policy.name=absa``): grow the batch as the curvature drops."""

    def __init__(self, config: RunConfig) -> None:
        batch = config.batch.global_batch_size
        at_cap = batch >= config.policy.max_global_batch
        adversarial = config.policy.name == "absa" and not at_cap and \
            adv_stop_epoch(config.policy.adv_stop_frac, config.epochs) > 0
        adv_ratio = config.policy.adv_ratio if adversarial else 0.0
        probe = not at_cap and config.epochs > 1  # a probe after the only epoch could change nothing
        super().__init__(config, PolicyState(config.policy.name, batch, adv_ratio, probe_next=probe))

    def initial(self) -> Decision:
        s, p = self._initial, self.config.policy
        reason = f"start at batch {s.global_batch_size} (batch.global_batch_size)"
        if s.global_batch_size >= p.max_global_batch:
            reason += f"; at the cap policy.max_global_batch={p.max_global_batch}: no probing"
        if self.name == "absa":
            reason += f"; adversarial fraction {s.adv_ratio:g}"
            reason += " (policy.adv_ratio)" if s.adv_ratio else \
                " (policy.adv_ratio, policy.adv_stop_frac, policy.max_global_batch)"
        return Decision(s.global_batch_size, s.adv_ratio, s.probe_next, None, reason)

    def next_global_batch(self) -> int | None:
        s, p = self.state, self.config.policy
        last = s.last_epoch + 1 >= self.config.epochs  # the epoch in progress is the run's last: no growth after it
        return None if last or s.global_batch_size >= p.max_global_batch else \
            min(s.global_batch_size * p.growth, p.max_global_batch)

    def wants_recheck(self, readings: list[float]) -> bool:
        s, p = self.state, self.config.policy
        if s.eig_ref is None or len(readings) > p.recheck:
            return False
        return all(math.isfinite(r) and r <= s.eig_ref / p.eig_ratio for r in readings)

    # ------------------------------------------------------------------------------------------- the rule

    def observe(self, m: EpochMeasurements) -> Decision:
        self._check_epoch(m)
        s = self.state
        if m.epoch >= m.num_epochs:  # nothing trains after this epoch: a growth would change nothing
            s.probe_next = False
            return self._decision(None, f"batch {s.global_batch_size} kept: the run ends after epoch {m.epoch} "
                                        f"(epochs={m.num_epochs})")
        decision = self._observe(m)
        if m.epoch + 1 >= m.num_epochs and s.probe_next:  # the last epoch's probe could change nothing either
            s.probe_next = False
            decision = dataclasses.replace(decision, probe_next=False)
        return decision

    def _observe(self, m: EpochMeasurements) -> Decision:
        s, p = self.state, self.config.policy
        s.epochs_since_growth += 1
        old_batch, old_adv = s.global_batch_size, s.adv_ratio
        eig = m.eigenvalue if m.eigenvalue is not None and math.isfinite(m.eigenvalue) else None
        if old_batch >= p.max_global_batch:
            s.probe_next = False
            s.adv_ratio = 0.0
            return self._decision(None, f"batch {old_batch} kept: at the cap policy.max_global_batch="
                                        f"{p.max_global_batch}; probing stops")
        waited = s.epochs_since_growth
        growth, reason = self._apply_rule(eig, m.eigenvalue, m.rechecks)
        adversarial = ramp = ""
        if growth is not None:
            self._grow(m.epoch)
            new_batch = s.global_batch_size
            if new_batch < old_batch * p.growth:
                reason += f" (clamped to the cap policy.max_global_batch={p.max_global_batch})"
            if new_batch >= p.max_global_batch:
                reason += f"; at the cap policy.max_global_batch={p.max_global_batch}: probing stops"
                s.adv_ratio = 0.0
                if old_adv > 0:
                    adversarial = f"adversarial fraction 0 at the cap policy.max_global_batch={p.max_global_batch}"
            elif old_adv > 0:
                s.adv_ratio = old_adv / p.growth
                adversarial = f"adversarial fraction {old_adv:.3g}→{s.adv_ratio:.3g} (÷ policy.growth={p.growth})"
            if p.lr_ramp_epochs > 0:
                ramp = f"LR ramps to its new value over policy.lr_ramp_epochs={p.lr_ramp_epochs:g}"
        if old_adv > 0 and s.adv_ratio > 0 and m.epoch >= adv_stop_epoch(p.adv_stop_frac, m.num_epochs):
            s.adv_ratio = 0.0
            adversarial = (f"adversarial training off after {m.epoch} of {m.num_epochs} epochs "
                           f"(policy.adv_stop_frac={p.adv_stop_frac:g})")
        early = max(0, p.duration - waited) if growth == CURVATURE else 0
        return self._decision(growth, "; ".join(filter(None, [reason, adversarial, ramp])), early)

    def _apply_rule(self, eig: float | None, raw: float | None,
                    rechecks: tuple[float, ...] = ()) -> tuple[str | None, str]:
        """(CURVATURE, FALLBACK or None; the reason). Sets λ_ref on the first probe and at a curvature growth only,
        and keeps the count of consecutive drops."""
        s, p = self.state, self.config.policy
        batch, target = s.global_batch_size, min(s.global_batch_size * p.growth, p.max_global_batch)
        waited = f"epoch {s.epochs_since_growth} of policy.duration={p.duration}"
        unprobed = False  # a probe that did not count: the reason names the λ_ref it leaves
        if eig is None:
            measured = "not probed" if raw is None else f"λ_max {raw} ignored (not finite)"
            unprobed = s.eig_ref is not None
        elif s.eig_ref is None:
            s.eig_ref = eig
            measured = (f"first probe sets λ_ref = λ_max {eig:.3g} "
                        f"(policy.eig_ratio={p.eig_ratio:g} applies from the next probe)")
        else:
            threshold = s.eig_ref / p.eig_ratio
            finite = [r for r in rechecks if math.isfinite(r)]
            failed = next((r for r in finite if r > threshold), None)
            diverged = next((r for r in rechecks if not math.isfinite(r)), None)
            shown, shown_ref = _compared_digits([eig, *finite], s.eig_ref, p.eig_ratio)
            compared = f"λ_max {shown[0]} {{}} λ_ref {shown_ref} / policy.eig_ratio={p.eig_ratio:g}"
            if eig > threshold:
                s.num_confirming = 0
                measured = compared.format(">")
            elif failed is not None:
                s.num_confirming = 0
                measured = (f"{compared.format('≤')}, but a recheck of new samples read "
                            f"{shown[1 + finite.index(failed)]} > λ_ref {shown_ref} / {p.eig_ratio:g} "
                            f"(policy.recheck={p.recheck}): no drop")
            elif diverged is not None:  # as a non-finite probe: the epoch counts as not probed
                measured = f"{compared.format('≤')}, but a recheck of new samples read {diverged} (not finite): " \
                           f"counted as not probed"
                unprobed = True
            else:
                if len(rechecks) != p.recheck:
                    raise ValueError(f"a drop observed with {len(rechecks)} of policy.recheck={p.recheck} rechecks")
                rechecked = f" and on {counted(len(rechecks), 'recheck')} of new samples ({', '.join(shown[1:])}; " \
                            f"policy.recheck={p.recheck})" if rechecks else ""
                s.num_confirming += 1
                if s.num_confirming >= p.confirm:
                    confirmed = f" on {p.confirm} probes in a row (policy.confirm={p.confirm})" if p.confirm > 1 else ""
                    s.eig_ref = (eig + sum(rechecks)) / (1 + len(rechecks))
                    mean = f" (the mean of this epoch's {1 + len(rechecks)} readings)" if rechecks else ""
                    return CURVATURE, (f"batch {batch}→{target}: {compared.format('≤')}{rechecked}{confirmed}; "
                                       f"λ_ref is now {s.eig_ref:.3g}{mean}")
                measured = f"{compared.format('≤')}{rechecked} on {s.num_confirming} of " \
                           f"policy.confirm={p.confirm} probes"
        if s.epochs_since_growth >= p.duration:
            kept = "" if s.eig_ref is None else f"; λ_ref {s.eig_ref:.3g} kept (a fallback growth leaves it)"
            return FALLBACK, (f"batch {batch}→{target}: {counted(s.epochs_since_growth, 'epoch')} without growth "
                              f"(policy.duration={p.duration}); {measured}{kept}")
        if unprobed:  # the fallback's reason names λ_ref already
            measured += f", λ_ref {s.eig_ref:.3g}"
        return None, f"batch {batch} kept: {measured} ({waited})"

    def _grow(self, epoch: int) -> None:
        """Double (×policy.growth) the batch at the end of ``epoch``; λ_ref was already set by the rule."""
        s, p, optim = self.state, self.config.policy, self.config.optim
        old_batch = s.global_batch_size
        new_batch = min(old_batch * p.growth, p.max_global_batch)
        if p.lr_ramp_epochs > 0:
            # Start from the LR actually in use (an unfinished earlier ramp included), so the LR is continuous.
            s.ramp_start_factor = self._ramp_factor(float(epoch)) * _scale_ratio(optim, old_batch, new_batch)
            s.ramp_start_epoch = float(epoch)
        s.global_batch_size = new_batch
        s.num_confirming = 0
        s.epochs_since_growth = 0
        s.num_growths += 1
        s.probe_next = new_batch < p.max_global_batch

    # ------------------------------------------------------------------------------------------- the LR

    def lr(self, epoch_progress: float) -> float:
        """``lr_at`` at the current batch (scaling, step decay, optim warm-up), times the post-growth ramp."""
        return lr_at(self.config.optim, self.state.global_batch_size, epoch_progress) * \
            self._ramp_factor(epoch_progress)

    def _ramp_factor(self, epoch_progress: float) -> float:
        """Linear from ``ramp_start_factor`` at the growth's epoch boundary to 1 after ``policy.lr_ramp_epochs``."""
        s, epochs = self.state, self.config.policy.lr_ramp_epochs
        if epochs <= 0 or s.ramp_start_factor == 1.0:
            return 1.0
        t = min(max((epoch_progress - s.ramp_start_epoch) / epochs, 0.0), 1.0)
        return s.ramp_start_factor + (1.0 - s.ramp_start_factor) * t


def _scale_ratio(optim: OptimConfig, old_batch: int, new_batch: int) -> float:
    """LR(old batch) / LR(new batch) under ``optim.lr_scaling``."""
    return scale_lr(1.0, optim.ref_batch_size, old_batch, optim.lr_scaling) / \
        scale_lr(1.0, optim.ref_batch_size, new_batch, optim.lr_scaling)


def _compared_digits(readings: list[float], ref: float, ratio: float) -> tuple[list[str], str]:
    """The readings and λ_ref with 3 significant digits, or as many more as every printed comparison needs to read
    true (λ_max 5.004 against λ_ref 10 / 2 read "λ_max 5 > λ_ref 10 / 2"); one count for all, so λ_ref is printed
    once for every reading it is compared with."""
    for digits in range(3, 18):
        shown, shown_ref = [f"{r:.{digits}g}" for r in readings], f"{ref:.{digits}g}"
        if all((float(text) <= float(shown_ref) / ratio) == (r <= ref / ratio) for text, r in zip(shown, readings)):
            return shown, shown_ref
    return [repr(r) for r in readings], repr(ref)
