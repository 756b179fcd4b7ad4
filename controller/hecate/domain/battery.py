"""Runtime sanity: whether a UPS's ``battery.runtime`` deserves the runtime trigger's trust.

This is a purely computational module. UPS firmware reports runtimes that are not so:
nutdrv_qx units report ``0`` on mains at full charge, others ``65535`` (an unset 16-bit
register) or a day at low load, or a value that stays frozen while the charge falls.
Trusting a bogus ``0`` shuts a cluster down three polls into any outage; trusting a frozen
value never does. :func:`judge` names what is wrong with a reading (a :class:`Doubt`), or
nothing; the trigger then uses the runtime only when it is trusted, and raises an alert
naming the doubt. The rules (docs/decisions.md, "Runtime sanity"):

* **missing** -- no usable ``battery.runtime`` (absent, blank, ``unknown``): nothing to use.
  Many UPSes never report one; this is shown in status, not alerted.
* **implausible** -- negative, at or above :data:`SENTINEL_S` (65535, an unset register), or
  above ``Limits.max_plausible_s``.
* **zero** -- ``0`` while the charge is at or above ``Limits.zero_charge_pct``; and, once a UPS has
  reported that (on mains or on battery), every later ``0`` from it: its firmware reports ``0`` for
  "no estimate" (nutdrv_qx), so a ``0`` at a low charge means no more than the one at full charge did.
  This is remembered for the daemon's life, across outages.
* **frozen** -- on battery, the same value for ``Limits.frozen_polls`` consecutive polls while
  the charge fell by at least :data:`FROZEN_CHARGE_DROP_PCT` points.
* **rising** -- on battery at steady load (within :data:`STEADY_LOAD_PCT` points), the runtime
  rose above :data:`RISE_FACTOR` x the last trusted on-battery reading + :data:`RISE_MIN_S`
  while the charge did not rise. A new level that then holds (does not rise further) for
  ``Limits.frozen_polls`` polls becomes the reference: one low reading (common right after the
  transfer to battery) must not leave every later reading untrusted.

``frozen`` and ``rising`` are doubts that the runtime is too *high*: the trigger still counts
such a reading when it is at or below the threshold (:mod:`hecate.domain.trigger`).

The memory these rules need is a small immutable :class:`Memory` kept per UPS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

from hecate.domain.ups import Snapshot, parse_number

SENTINEL_S = 65535.0
"""0xFFFF: what firmware with no estimate (or an overflowed one) reports; never a runtime."""
FROZEN_CHARGE_DROP_PCT = 5.0
"""A runtime unchanged while the charge fell this many points is frozen (a coarse, minute-step runtime of
any UPS worth protecting a cluster moves within 5 % of its charge)."""
RISE_FACTOR = 1.5
RISE_MIN_S = 120.0
"""A rise above ``RISE_FACTOR`` x the last trusted on-battery runtime + ``RISE_MIN_S`` at steady load and a
charge that did not rise is inconsistent (a load that fell legitimately raises the runtime: that is not steady)."""
STEADY_LOAD_PCT = 5.0
"""The load counts as steady while it stays within this many points of the last trusted reading's."""


class Doubt(StrEnum):
    """Why a runtime reading is not trusted."""

    missing = "missing"
    implausible = "implausible"
    zero = "zero"
    frozen = "frozen"
    rising = "rising"


@dataclass(frozen=True)
class Limits:
    """The configurable side of the rules (``trigger.runtime_zero_charge_pct``, ``max_plausible_runtime_s``,
    ``runtime_frozen_polls``)."""

    zero_charge_pct: float = 50.0
    max_plausible_s: float = 86_400.0
    frozen_polls: int = 5


@dataclass(frozen=True)
class Memory:
    """What the rules remember of one UPS between polls (bounded: eight numbers and a flag)."""

    same_runtime: float | None = None
    """The runtime of the current on-battery run of identical readings."""
    same_polls: int = 0
    """How many consecutive on-battery polls have read ``same_runtime``."""
    same_charge: float | None = None
    """The charge at the first poll of that run (the highest seen during it)."""
    trusted_runtime: float | None = None
    """The last trusted on-battery runtime, its charge and load (the reference of the ``rising`` rule)."""
    trusted_charge: float | None = None
    trusted_load: float | None = None
    rise_level: float | None = None
    """The level of the current run of ``rising`` readings that did not rise further (the first and highest)."""
    rise_polls: int = 0
    """How many consecutive ``rising`` polls have held at or below ``rise_level``."""
    zero_means_unknown: bool = False
    """This UPS has reported ``0`` at a high charge: its ``0`` is "no estimate" at any charge (kept off battery)."""


@dataclass(frozen=True)
class Verdict:
    doubt: Doubt | None = None
    """None: trusted."""
    why: str = "trusted"
    """One sentence naming the doubt and the readings behind it (for the alert and status)."""

    @property
    def trusted(self) -> bool:
        return self.doubt is None


def raw_runtime(snap: Snapshot) -> float | None:
    """``battery.runtime`` as reported, any finite number (the snapshot's own ``runtime_s`` drops absurd ones)."""
    if snap.runtime_s is not None:
        return snap.runtime_s
    return parse_number(snap.variables.get("battery.runtime"), -math.inf, math.inf)


def judge(memory: Memory, snap: Snapshot, limits: Limits) -> tuple[Verdict, Memory]:
    """Whether ``snap``'s runtime can be trusted, and the memory for the next poll. Never raises.

    Call it for readings with current data (``snap.ok``); off battery the on-battery memory is dropped.
    """
    value = raw_runtime(snap)
    charge, load = snap.charge_pct, snap.load_pct
    if not snap.on_battery:
        memory = Memory(zero_means_unknown=memory.zero_means_unknown)
    elif value is not None:
        if value == memory.same_runtime:
            seen = [c for c in (memory.same_charge, charge) if c is not None]
            memory = replace(memory, same_polls=memory.same_polls + 1, same_charge=max(seen) if seen else None)
        else:
            memory = replace(memory, same_runtime=value, same_polls=1, same_charge=charge)
    doubt = _doubt(memory, snap, value, limits)
    if doubt is Doubt.zero and not memory.zero_means_unknown:
        memory = replace(memory, zero_means_unknown=True)
    if doubt is Doubt.rising and value is not None:
        held = memory.rise_level is not None and value <= memory.rise_level
        memory = (replace(memory, rise_polls=memory.rise_polls + 1) if held
                  else replace(memory, rise_level=value, rise_polls=1))
        if memory.rise_polls >= limits.frozen_polls:  # the new level held: it is the reference now
            doubt = None
    if doubt is not Doubt.rising:
        memory = replace(memory, rise_level=None, rise_polls=0)
    if doubt is None:
        if snap.on_battery and value is not None:
            memory = replace(memory, trusted_runtime=value, trusted_charge=charge, trusted_load=load)
        return Verdict(), memory
    return Verdict(doubt, _explain(doubt, value, snap, memory, limits)), memory


def _doubt(memory: Memory, snap: Snapshot, value: float | None, limits: Limits) -> Doubt | None:
    charge, load = snap.charge_pct, snap.load_pct
    if value is None:
        return Doubt.missing
    if value < 0 or value >= SENTINEL_S or value > limits.max_plausible_s:
        return Doubt.implausible
    if value == 0 and (memory.zero_means_unknown or (charge is not None and charge >= limits.zero_charge_pct)):
        return Doubt.zero
    if not snap.on_battery:
        return None
    if (memory.same_polls >= limits.frozen_polls and memory.same_charge is not None and charge is not None
            and memory.same_charge - charge >= FROZEN_CHARGE_DROP_PCT):
        return Doubt.frozen
    ref, ref_charge, ref_load = memory.trusted_runtime, memory.trusted_charge, memory.trusted_load
    if (ref is not None and ref_charge is not None and ref_load is not None and charge is not None
            and load is not None and charge <= ref_charge and abs(load - ref_load) <= STEADY_LOAD_PCT
            and value > RISE_FACTOR * ref + RISE_MIN_S):
        return Doubt.rising
    return None


def _explain(doubt: Doubt, value: float | None, snap: Snapshot, memory: Memory, limits: Limits) -> str:
    shown = "-" if value is None else f"{value:g} s"
    match doubt:
        case Doubt.missing:
            return "the UPS reports no usable battery.runtime"
        case Doubt.implausible:
            return (f"battery.runtime {shown} is implausible (negative, the 65535 sentinel, or above "
                    f"max_plausible_runtime_s {limits.max_plausible_s:g} s)")
        case Doubt.zero:
            if snap.charge_pct is not None and snap.charge_pct >= limits.zero_charge_pct:
                return (f"battery.runtime 0 s at {snap.charge_pct:g} % charge (at or above "
                        f"{limits.zero_charge_pct:g} %): firmware that reports no estimate")
            return ("battery.runtime 0 s from a UPS that reported 0 s at a high charge before: firmware that "
                    "reports no estimate")
        case Doubt.frozen:
            return (f"battery.runtime frozen at {shown} for {memory.same_polls} polls on battery while the charge "
                    f"fell from {memory.same_charge:g} % to {snap.charge_pct:g} %")
        case Doubt.rising:
            return (f"battery.runtime rose to {shown} from {memory.trusted_runtime:g} s at steady load while the "
                    "charge did not rise")
