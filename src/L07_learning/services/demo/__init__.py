"""``l07 demo``: the whole loop on generated data (``demo``), its report (``report``) and the generator of the
sample event stream (``sample_stream``, also behind ``l07 sample-events``, the benchmarks and the tests). Kept
apart from the library: no other service imports this folder."""
