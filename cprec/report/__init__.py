"""What a finished sweep becomes: tables grouped by overrides (``tables``), every picture
cprec draws (``plots``, ``ldp_plots``) and the papers' figures beside measured ones
(``reproduction``). Reads run directories only; trains nothing.
"""
