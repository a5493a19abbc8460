"""Numerics around the quantized layers: loss scaling (``loss_scale``) and the error
statistics it reads (``error_stats``), real mixed precision (``amp``), the formats weights
are stored in (``weight_formats``) with their Kahan-summed optimizers (``lowp_optim``), and
the optimizer and learning-rate schedules every run builds (``optim``).
"""
