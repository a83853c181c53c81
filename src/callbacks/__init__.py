"""Lightning callbacks configured in conf/callbacks/: resumable last.ckpt and the non-finite loss guard."""
