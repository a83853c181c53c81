"""What every entry point does before and after its work: config errors in a second, printed once.

``python -m src.train peft=lroa`` used to import torch, Lightning, timm and MLflow (tens of seconds on a
loaded machine) before Hydra composed the config and found the typo. :func:`check_config` composes the
config with Hydra alone, exactly as ``@hydra.main`` will, and exits with one ``error:`` line on a config
error; the entry modules call it above their heavy imports when run as ``__main__``. This module must
therefore import nothing heavy (no torch, no ``src.config``).

:func:`exit_with_error` prints a user's mistake once (stderr, ``error:``), keeps it in the run's log file and
removes the run dir when the run stopped before writing anything of its own (only Hydra's ``.hydra/`` and
log are there), so a config error leaves no empty run dir behind.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# What Hydra writes into a run dir before our code runs; a dir holding nothing else is empty.
HYDRA_FILES = {".hydra"}


def check_config(config_name: str, argv: Sequence[str] | None = None) -> None:
    """Compose ``config_name`` with the command line's overrides; on a config error exit with one line.

    A multirun is checked with its fixed overrides plus each value of every choice sweep (``peft=lora,
    lroa``), so a typo in one job's option stops the sweep before it starts. Flags that change what Hydra
    does (``--help``, ``--cfg``, ``--config-name``...) are left to Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args, unknown = get_args_parser().parse_known_args(list(sys.argv[1:] if argv is None else argv))
    special = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion, args.config_path)
    if unknown or any(special) or args.config_name or args.config_dir or args.experimental_rerun:
        return
    try:
        jobs = [list(args.overrides)]
        if args.multirun:
            parsed = OverridesParser.create().parse_overrides(args.overrides)
            fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
            jobs = [fixed]
            for o in parsed:
                if o.is_choice_sweep():
                    key = o.input_line.split("=", 1)[0]
                    jobs += [[*fixed, f"{key}={value}"] for value in o.sweep_string_iterator()]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for overrides in jobs:
                compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise SystemExit(f"error: {err}") from None


def run_dir_is_empty(run_dir: Path) -> bool:
    """Only Hydra's bookkeeping (``.hydra/``, ``<task>.log``) is there: the run wrote nothing yet."""
    return run_dir.is_dir() and all(p.name in HYDRA_FILES or p.suffix == ".log" for p in run_dir.iterdir())


def log_to_files(logger: logging.Logger, message: str) -> None:
    """Record an error in the run's log file only: the console gets it once, as the ``error:`` line."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def remove_empty_run_dir(run_dir: Path) -> bool:
    """Delete ``run_dir`` when the run left nothing in it but Hydra's files; returns whether it did."""
    if not run_dir_is_empty(run_dir):
        return False
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's file handler still holds <run dir>/<task>.log open
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def exit_with_error(logger: logging.Logger, error: BaseException, keep_run_dir: bool = False) -> NoReturn:
    """End a single run on a user's mistake: one ``error:`` paragraph on stderr, the same in the log file,
    and no run dir left when the run wrote nothing into it (``keep_run_dir``: a resumed run's own dir)."""
    from hydra.core.hydra_config import HydraConfig

    log_to_files(logger, str(error))
    if not keep_run_dir and HydraConfig.initialized():
        remove_empty_run_dir(Path(HydraConfig.get().runtime.output_dir))
    raise SystemExit(f"error: {error}")
