"""What the guest agent records of each switch attempt.

The agent's thread (C, _core/agent.c, started by pvpatch.auto()) applies each decision at once
and retries a refused one with backoff (50 ms doubling up to 5 s) while it stays what the policy
wants; a newer decision replaces it.  Every attempt is recorded as a SwitchEvent with the times
along the way, all CLOCK_MONOTONIC nanoseconds so that they compare with the publisher's
changed_ns:

  published_ns  the publisher moved the generation (page.changed_ns)     [host]
  seen_ns       the agent held a validated snapshot of the page          [guest]
  decided_ns    the switch began (the policy decided just before)
  done_ns       runtime_patch returned
  latency_s     done - published: publication to switch complete (None when the decision was
                not caused by a publication, e.g. a page that went stale)
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SwitchEvent:
    variants: dict[str, str]
    mode: str
    reason: str
    generation: int | None
    published_ns: int | None
    seen_ns: int | None
    decided_ns: int
    done_ns: int = 0
    ok: bool = False
    error: str = ""
    patch_event: object = None
    attempt: int = 1       # 1 for the first try of a decision, then one more per retry

    @property
    def latency_s(self) -> float | None:
        return None if self.published_ns is None else (self.done_ns - self.published_ns) / 1e9

    @property
    def notify_latency_s(self) -> float | None:
        if self.published_ns is None or self.seen_ns is None:
            return None
        return (self.seen_ns - self.published_ns) / 1e9

    def to_json(self) -> dict:
        return {"variants": self.variants, "mode": self.mode, "reason": self.reason,
                "generation": self.generation, "published_ns": self.published_ns,
                "seen_ns": self.seen_ns, "decided_ns": self.decided_ns, "done_ns": self.done_ns,
                "latency_s": self.latency_s, "notify_latency_s": self.notify_latency_s,
                "ok": self.ok, "error": self.error or None, "attempt": self.attempt}
