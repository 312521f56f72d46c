"""What the commands share at their edge: flags parsed, and every usage mistake told in one line, status 2.

`run(main)` replaces `app.run(main)`. A mistyped flag or config key, a value of the wrong type, a config file
that is missing or does not execute, a required flag left out: each prints one line on stderr naming the flag
or key and the fix, with no help text and no traceback, and exits with USAGE_STATUS. Light on purpose (absl
and ml_collections only): the sweep and the report import it without JAX.
"""

from __future__ import annotations

import difflib
import errno
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import ConfigDict
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from experiments import compilation_cache
from experiments.files import CONFIG_FILE

USAGE_STATUS = 2  # a mistake in what was asked: the same command fails the same way until it is changed

# What to do about an OS error on a path the command was given, by errno.
_OS_FIXES = {
    errno.EROFS: "the file system is read-only: give a writable directory",
    errno.EACCES: "permission denied: give a directory you can write, or change its permissions",
    errno.EPERM: "operation not permitted: give a directory you can write",
    errno.ENOTDIR: "a part of the path is a file, not a folder: give a directory path",
    errno.EEXIST: "it exists and is not a folder: give a directory path",
    errno.EISDIR: "it is a folder where a file was expected",
    errno.ENOSPC: "no space left on the device: free some space",
    errno.EDQUOT: "the disk quota is exceeded: free some space",
}
# tensorstore (orbax's writer) reports the OS error of a failed write in its message, not as an OSError.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def fail(message: str, status: int = USAGE_STATUS, *, at_once: bool = False) -> NoReturn:
  """Prints `error: message` on stderr and exits with `status`.

  Args:
    message: the one line.
    status: the exit status.
    at_once: end the process without the interpreter's shutdown, for a failure met inside orbax or tensorstore
      (a full disk, a checkpoint that does not read). Their worker threads, unfinished reads and tensorboardX's
      exit handler would each print a traceback of the same failure while the interpreter shuts down, after
      this line. The caller has let every checkpoint write finish; metrics.jsonl is flushed row by row.
  """
  print(f"error: {message}", file=sys.stderr)
  if at_once:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
  sys.exit(status)


def run(main: Callable[[list[str]], Any]) -> None:
  """Runs a command's main like app.run, with flag and usage mistakes told in one line and status 2.

  Libraries log at WARNING and above only, unless --verbosity is given (see quiet_libraries). Compiled
  programs are kept on disk for later runs (experiments/compilation_cache.py). A reader that
  stops reading (`--help | head`, `sample ... | head`) ends the command quietly, with the
  status of a process that SIGPIPE ended (as `cat` has), not with a traceback or an error line.

  Args:
    main: the command; an app.UsageError it raises is one of these mistakes.
  """

  def guarded(argv: list[str]) -> Any:
    quiet_libraries()
    compilation_cache.configure()
    try:
      return main(argv)
    except app.UsageError as error:  # absl would print the whole --help before the message
      fail(str(error))

  try:
    app.run(guarded, flags_parser=parse_flags)
  except BrokenPipeError:  # Python ignores SIGPIPE, so a write to a closed pipe raises instead
    sys.exit(128 + signal.SIGPIPE)


def quiet_libraries() -> None:
  """Keeps the libraries' INFO records (orbax's checkpoint internals, JAX's backend probing, TFDS, grain,
  Optuna) off the terminal: absl's verbosity (which also sets Python logging's root level) becomes WARNING,
  unless --verbosity (or -v) was given on the command line: `--verbosity=0` brings the INFO records back."""
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
    # Optuna (the sweep's) sets its own logger's level to INFO when it is imported, before this runs.
    logging.getLogger("optuna").setLevel(logging.WARNING)


def run_error_line(error: BaseException, workdir: str, step: int | None = None) -> str:
  """One line for a run that does not load (no such folder, not a run, no checkpoint): the flag first, a fix.

  Args:
    error: what loading raised (FileNotFoundError, a checkpoint error).
    workdir: the --workdir given.
    step: the --step given, if any.
  """
  if not os.path.isdir(workdir):
    return f"--workdir={workdir}: no such folder; give the directory a training run wrote (its --workdir)"
  message = str(error)
  if step is not None and f"step {step}" in message:
    return f"--step={step}: {message}"
  if isinstance(error, FileNotFoundError) and "checkpoint" in message and os.path.exists(
      os.path.join(workdir, CONFIG_FILE)):
    return (f"--workdir={workdir}: the run has saved no checkpoint yet ({message}); train it "
            f"(python -m experiments.train ... --workdir={workdir}) or wait for its first checkpoint")
  return f"--workdir={workdir}: {message}"


def parse_flags(argv: Sequence[str]) -> list[str]:
  """Parses the command line into absl's FLAGS; exits with one line and status 2 on any mistake in it.

  Returns:
    The arguments left after the flags, the program's name first.
  """
  try:
    remaining = flags.FLAGS(argv)
  except BrokenPipeError:  # --help's reader went away: run() ends quietly
    raise
  except Exception as error:  # pylint: disable=broad-except
    # Anything raised here comes from the command line or from the config file it names (a user's code).
    fail(describe_flag_error(error, argv))
  for name, flag in _config_flags():
    # A config file that could not be read is kept as a stand-in that raises OSError when first touched;
    # touch it now, so the mistake is told before main imports or builds anything.
    if flag.value is not None:
      try:
        getattr(flag.value, "keys")
      except OSError:
        fail(_load(name, _argument(argv, name) or "")[1] or f"--{name}: the config file cannot be read")
  return remaining


def describe_flag_error(error: Exception, argv: Sequence[str]) -> str:
  """One line for an exception raised while parsing `argv`: the flag or config key at fault and the fix."""
  for name, _ in _config_flags():
    path = _argument(argv, name)
    if path is None:
      continue
    config, problem = _load(name, path)
    if problem:
      return problem
    for override in _overrides(argv, name):
      problem = _unknown_key(config, override, name, path)
      if problem:
        return problem
  message = str(error).strip()
  first = message.splitlines()[0] if message else type(error).__name__
  value_error = re.match(r"flag --(?P<flag>[^=]+)=(?P<value>.*?): (?P<why>.*)", first)
  if value_error:
    flag_name, value, why = value_error.group("flag", "value", "why")
    if "must have a value other than None" in why:
      return f"--{flag_name} is required: {_help(flag_name)}"
    kind = flags.FLAGS[flag_name].parser.flag_type() if flag_name in flags.FLAGS else "value"
    return f"--{flag_name}={value}: {why}; give a value of type {kind}"
  if isinstance(error, flags.UnrecognizedFlagError):
    return _unknown_flag(error.flagname)
  if isinstance(error, flags.Error):
    return f"{first} (--help lists the flags)"
  return f"{type(error).__name__}: {first}"


def os_error_line(error: BaseException, where: str | None = None) -> str | None:
  """`path: what went wrong: the fix` for an OS error (also one that tensorstore reports), else None.

  Args:
    error: the error raised.
    where: the path to name when the error names none (tensorstore's reports of a full disk may not).
  """
  found = _os_error(error)
  if found is None:
    return None
  code, path = found
  what = _OS_FIXES.get(code, os.strerror(code))
  path = path or where
  return f"{path}: {what}" if path else what


def is_disk_full(error: BaseException) -> bool:
  """Whether the error is (or was caused by) a full disk or an exceeded quota."""
  found = _os_error(error)
  return found is not None and found[0] in (errno.ENOSPC, errno.EDQUOT)


def _os_error(error: BaseException | None) -> tuple[int, str | None] | None:
  """(errno, path) of the OS error that `error` is or was caused by, or None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno is not None:
      return error.errno, error.filename
    code = _OS_ERROR_CODE.search(str(error))
    if code:
      path = re.search(r'"(/[^"]+)"', str(error))  # the first absolute path it quotes
      return int(code.group(1)), path.group(1) if path else None
    error = error.__cause__ or error.__context__
  return None


def _unknown_flag(name: str) -> str:
  """The line for a flag the command does not define: the one meant, where it is near one it does define."""
  if name.startswith("config.") and not _config_flags():
    key = name[len("config."):]
    field = key.rsplit(".", 1)[-1]
    hint = f"; --{field} sets its {key}" if field in flags.FLAGS else ""
    return f"--{name}: this command takes no --config overrides: it reads the run's own {CONFIG_FILE}{hint}"
  close = difflib.get_close_matches(name, list(flags.FLAGS), n=1)
  return f"--{name}: no such flag" + (f"; did you mean --{close[0]}?" if close else "") + " (--help lists the flags)"


def _help(name: str) -> str:
  return flags.FLAGS[name].help.rstrip(".")


def _config_flags() -> list[tuple[str, Any]]:
  named = ((name, flags.FLAGS[name]) for name in flags.FLAGS)
  return [(name, flag) for name, flag in named if isinstance(flag.parser, ConfigFileFlagParser)]


def _argument(argv: Sequence[str], name: str) -> str | None:
  """The last value given to --name on the command line (`--name=V` or `--name V`), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith((f"--{name}=", f"-{name}=")):
      value = arg.split("=", 1)[1]
  return value


def _overrides(argv: Sequence[str], name: str) -> list[str]:
  """The dotted keys of the --name.KEY=VALUE overrides on the command line (--noname.KEY too)."""
  pattern = re.compile(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)")
  return [found.group(1) for found in map(pattern.match, argv) if found]


def _load(name: str, path: str) -> tuple[Any, str | None]:
  """(config, None) from the file given to --name, or (None, why it does not load: missing, a syntax error...)."""
  file = path.split(":", 1)[0]
  if not file:
    return None, f"--{name} is empty (--{name}: {_help(name)})"
  try:
    config = flags.FLAGS[name].parser.parse(path)
    getattr(config, "keys")  # raises the OSError of a file that could not be read
  except SyntaxError as error:
    return None, f"--{name}={path}: syntax error in {error.filename} line {error.lineno}: {error.msg}; fix the file"
  except OSError:
    if not os.path.isfile(file):
      return None, f"--{name}={path}: no such file {file!r} (--{name}: {_help(name)})"
    return None, f"--{name}={path}: {file} cannot be read: check its permissions"
  except Exception as error:  # pylint: disable=broad-except
    # ml_collections folds the traceback of a ValueError or TypeError into the message: its last line is the error.
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    reason = last if "Error whilst parsing config file" in str(error) else f"{type(error).__name__}: {last}"
    return None, f"--{name}={path}: {file} fails to build its config: {reason}"
  return config, None


def _unknown_key(config: Any, override: str, name: str, path: str) -> str | None:
  """The message for an override whose key the config does not have (with the nearest key), else None."""
  node, parts = config, override.split(".")
  for depth, key in enumerate(parts):
    where = ".".join(parts[:depth])
    if not isinstance(node, ConfigDict):
      return (f"--{name}.{override}: {where} is a value ({type(node).__name__}), not a section; "
              f"override --{name}.{where} itself")
    if key not in node:
      known = sorted(node.keys())
      close = difflib.get_close_matches(key, known, n=1)
      prefix = f"{where}." if where else ""
      hint = (f"did you mean --{name}.{prefix}{close[0]}?" if close else
              f"the keys of {where or 'the config'} are {', '.join(known)}")
      return f"--{name}.{override}: {path} has no key {prefix}{key}; {hint}"
    node = node[key]
  return None
