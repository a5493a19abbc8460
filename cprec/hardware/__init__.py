"""What hardware would charge for a run, beside its BitOPs: energy on a format-native
accelerator (``energy``: 45 nm per-operation and per-bit tables) and modeled time on named
devices (``devices``: datasheet peaks and bandwidths, a roofline per GEMM). ``formats``
says which number format each operand of each GEMM has; ``model`` measures the layers'
shapes and turns a run's ledger into ``energy_j`` and ``modeled_time_s.<device>``.
"""
