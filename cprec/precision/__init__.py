"""Everything that decides bits: schedules (``schedules``), where a cyclic run's bounds come
from (``bounds``), the precision range test (``range_test``), learned per-layer precision
(``ldp``), the schedule applied to a model each step with the last-layer rule
(``scheduled``) and the no-training preview of a schedule (``preview``).
"""
