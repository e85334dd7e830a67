"""Cross-modal hashing (CMSEH): hash heads, VTFN fusion and losses.

Training lives in :mod:`vistrieve.training.hashing`, the binary Hamming index in
:mod:`vistrieve.indexes` and the hashing first stage in :mod:`vistrieve.retrievers.hashing`.
Names load lazily (the peft ``tuners/lora/__init__.py`` pattern), so that importing this
package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vistrieve.hashing.heads import (
        CMSEH,
        STANDARD_BITS,
        VTFN,
        CMSEHConfig,
        HashHead,
        HashOutput,
        LinearHashHead,
        SelectHashHead,
        binarize,
        check_bits,
        pack_codes,
    )
    from vistrieve.hashing.losses import CMSEHLoss, HashLossConfig, ProxyLoss

_LAZY = {
    **{
        name: "vistrieve.hashing.heads"
        for name in (
            "CMSEH",
            "STANDARD_BITS",
            "VTFN",
            "CMSEHConfig",
            "HashHead",
            "HashOutput",
            "LinearHashHead",
            "SelectHashHead",
            "binarize",
            "check_bits",
            "pack_codes",
        )
    },
    **{name: "vistrieve.hashing.losses" for name in ("CMSEHLoss", "HashLossConfig", "ProxyLoss")},
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vistrieve.hashing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CMSEH",
    "STANDARD_BITS",
    "VTFN",
    "CMSEHConfig",
    "CMSEHLoss",
    "HashHead",
    "HashLossConfig",
    "HashOutput",
    "LinearHashHead",
    "ProxyLoss",
    "SelectHashHead",
    "binarize",
    "check_bits",
    "pack_codes",
]
