"""Lightning callbacks configured in conf/callbacks/: RNG states for resume, SIGTERM, the non-finite guard,
the strategy's prepare pass on rank 0, and the console (progress bar or per-epoch log lines, model summary)."""
