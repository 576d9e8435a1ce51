"""Host hints and the guest's reaction to them (docs/hints.md).

    sources -> hostd (publisher) -> hint page -> notifier (subscriber) -> policy -> worker

abi        the page's bytes: layout, constants, encode/decode/validate
shm        mappings, the seqcount protocol, the generation futex
sources    what the publisher measures
publisher  hysteresis decision, the page's single writer, the hostd loop
reader     a guest's validated, consistent view of the page
subscriber the notifier thread (futex wait with a staleness timeout)
policy     hints -> variants, with dwell and settle
worker     applies decisions with runtime_patch, records switch events
guest      auto(): the three guest threads in one call
latency    publication-to-notification (and -to-switch) latency
"""
from .abi import DEFAULT_PATH, HINT_REALTIME, HintPage, HintPageError
from .guest import AutoHandle, auto
from .reader import HintReader, HintState

__all__ = ["DEFAULT_PATH", "HINT_REALTIME", "AutoHandle", "HintPage", "HintPageError",
           "HintReader", "HintState", "auto"]
