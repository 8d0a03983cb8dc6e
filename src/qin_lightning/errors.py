"""User-facing errors: one clear line naming the file, column or config key and what was expected, and how an
entry point ends on one (``error: <message>`` on stderr, exit status 2, no traceback).

Every entry point runs through one of two doors: ``run_reporting_errors`` (argparse commands, and the work inside a
Hydra task) and ``run_hydra_reporting_errors`` (a ``@hydra.main`` function: Hydra's own composition errors, such
as an unknown group option, an unknown key or an unparsable override, become one line with exit status 2 too).
``traceback=true`` on a Hydra command line shows the full traceback instead.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Any, Callable, NoReturn, TypeVar

from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class QinError(Exception):
    """An error caused by the user's input or configuration; its message is shown without a traceback."""

    # True when raised before anything ran (config, data, memory checks): the run's fresh folder is removed
    before_start: bool = False


class DataValidationError(QinError):
    """A dataset folder does not follow the MMCTR layout (see ``qin_lightning.data.layout``)."""


class ConfigError(QinError):
    """A configuration value is missing, unknown or inconsistent with the data."""


def exit_with_error(err: QinError) -> NoReturn:
    """End the process with ``error: <message>`` on stderr, exit status 2, no traceback."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def run_reporting_errors(fn: Callable[[], T], show_traceback: bool = False) -> T:
    """Run ``fn``; a ``QinError`` ends the process with ``error: <message>`` (exit 2) and no traceback."""
    try:
        return fn()
    except QinError as err:
        if show_traceback:
            raise
        exit_with_error(err)


def traceback_requested(argv: list[str]) -> bool:
    """Whether a Hydra command line asks for full tracebacks (``traceback=true``)."""
    return any(arg.lstrip("+").lower() in ("traceback=true", "traceback=1") for arg in argv)


def run_hydra_reporting_errors(hydra_main: Callable[[], T]) -> T:
    """Run a ``@hydra.main`` function (it reads ``sys.argv``) so that every user error, Hydra's composition errors
    included, ends as one ``error:`` line with exit status 2 (Hydra itself prints several lines, exit 1)."""
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them and exiting 1
    try:
        return hydra_main()
    except QinError as err:
        if traceback_requested(sys.argv[1:]):
            raise
        exit_with_error(err)
    except (HydraException, OmegaConfBaseException) as err:
        if traceback_requested(sys.argv[1:]):
            raise
        exit_with_error(ConfigError(config_error_line(err)))
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def config_error_line(err: BaseException) -> str:
    """One line for a Hydra / OmegaConf configuration error: the override or key, and what is accepted."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options is not None:
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        if group:
            return f"{group}={option}: no such option; {group} is one of {', '.join(sorted(err.options))}"
    if isinstance(err, OverrideParseException):
        lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("See ")]
        return f"cannot read the command line: {': '.join(lines[:2])} (each override is key=value)"
    no_group = re.match(r"Could not override '(.+)'\. No match in the defaults list", str(err))
    if no_group:
        return f"{no_group[1]}: this command has no config group '{no_group[1]}' (--help lists what it accepts)"
    cause = err.__cause__
    if isinstance(err, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        unknown = _unknown_key_line(cause)
        if unknown:
            return unknown
        return f"{_first_line(str(err))} {_first_line(str(cause))}"
    if isinstance(err, OmegaConfBaseException):
        key = getattr(err, "full_key", None)
        return f"config key '{key}': {_first_line(str(err))}" if key else _first_line(str(err))
    return _first_line(str(err))


def _unknown_key_line(err: OmegaConfBaseException) -> str | None:
    """``<key>: unknown key; did you mean <nearest>?`` for an override of a key the config does not have."""
    parent, key, full_key = getattr(err, "parent_node", None), getattr(err, "key", None), getattr(err, "full_key", None)
    if not isinstance(parent, DictConfig) or key is None or not full_key or "not in struct" not in str(err):
        return None
    prefix = str(full_key)[: -len(str(key))]
    known = [str(k) for k in parent.keys()]
    nearest = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if nearest:
        return f"{full_key}: unknown key; did you mean {prefix}{nearest[0]}?"
    where = f"'{prefix.rstrip('.')}'" if prefix else "the config"
    if not known:
        return f"{full_key}: unknown key; {where} has no keys in this config"
    shown = ", ".join(sorted(known)[:20]) + (", ..." if len(known) > 20 else "")
    return f"{full_key}: unknown key; {where} has {shown} (+{full_key}=... adds a new key)"


def missing_values(cfg: DictConfig) -> None:
    """ConfigError naming the first mandatory value (``???``) the command line left unset."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        others = f" (also {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise ConfigError(f"{missing[0]} has no value: add {missing[0]}=<value> to the command{others}")


def expect_int(cfg: DictConfig, key: str, minimum: int = 1, nullable: bool = False) -> None:
    """ConfigError unless ``cfg[key]`` (dotted) is an integer >= ``minimum`` (or null where allowed)."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None and (nullable or OmegaConf.select(cfg, key, default="<absent>") == "<absent>"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}: expected an integer >= {minimum}" + (" or null" if nullable else ""))


def expect_number(cfg: DictConfig, key: str, minimum: float = 0.0, inclusive: bool = True,
                  nullable: bool = False) -> None:
    """ConfigError unless ``cfg[key]`` (dotted) is a number >= ``minimum`` (> where not inclusive)."""
    value: Any = OmegaConf.select(cfg, key, default=None)
    if value is None and (nullable or OmegaConf.select(cfg, key, default="<absent>") == "<absent>"):
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or (value < minimum if inclusive else value <= minimum):
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ConfigError(f"{key}={value!r}: expected a number {bound}" + (" or null" if nullable else ""))


DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def expect_device(name: str, key: str = "device") -> None:
    """ConfigError unless ``name`` is auto, cpu, cuda, cuda:N or mps."""
    if not DEVICE.fullmatch(str(name)):
        raise ConfigError(f"{key}={name}: expected auto, cpu, cuda or cuda:N")
