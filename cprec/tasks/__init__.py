"""Tasks: what a batch, a loss and a metric are for each family of datasets.

``base`` (the Task interface every family implements), ``families`` (which family trains
which dataset), ``vision`` + ``classification`` (in-memory image datasets), ``imagefolder``
(images streamed from files), ``corpora`` + ``language`` (token streams, perplexity),
``graph`` (Planetoid node classification).
"""
