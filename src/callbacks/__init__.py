"""Lightning callbacks configured in conf/callbacks/: RNG states for resume, SIGTERM, the non-finite guard."""
