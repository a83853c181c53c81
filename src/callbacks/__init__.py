"""Lightning callbacks configured in conf/callbacks/: resumable last.ckpt, the non-finite loss guard, and the
console (progress bar or per-epoch log lines, model summary)."""
