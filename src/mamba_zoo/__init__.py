"""mamba-zoo: Mamba-family state-space models as first-class Hugging Face transformers models.

Importing `mamba_zoo` registers every model family with transformers' `Auto*` factories, so
`AutoModel*.from_pretrained(...)`, `AutoFeatureExtractor`, `AutoProcessor` and `pipeline(...)` find them.
"""

__version__ = "0.1.0"

from .mamba_layers import (  # noqa: F401
    Mamba2Mixer,
    MambaBlock,
    MambaMixer,
    MambaZooCache,
    RMSNorm,
    RMSNormGated,
    SwitchMoE,
    load_balancing_loss,
)
from .selective_scan import selective_scan_fn, selective_state_update  # noqa: F401
from .causal_conv1d import causal_conv1d_fn, causal_conv1d_update  # noqa: F401
from .ssd import mamba2_state_update, mamba_chunk_scan_combined  # noqa: F401

# Each model family registers itself in its own section below (imports + Auto* registration).

# --- ssamba ---
# --- end ssamba ---

# --- mamba_ctc ---
# --- end mamba_ctc ---

# --- mamba_asr ---
# --- end mamba_asr ---

# --- blackmamba ---
# --- end blackmamba ---
