"""The training config's command-line options, generated from :class:`harness.config.TrainConfig`.

Each field becomes one option (``total_steps`` -> ``--total-steps``) whose type follows the field's
(its rule's choices and minimum too) and whose help is the field's docstring; left out, an option takes
the preset's value. ``entry_points/mlproject.py`` writes MLproject's parameters from the same fields, so a
new field shows up in ``--help`` and in MLproject without touching either.
"""

from __future__ import annotations

import dataclasses
import re

import click

from harness.config import TrainConfig, field_docs, field_rule

PRESET = "preset"  # MLproject's spelling of "not given: take the preset's value"
# MLflow passes an MLproject parameter it does not declare as --name_with_underscores: the same option.
CONTEXT = {"token_normalize_func": lambda token: token.replace("_", "-")}
# Fields with options of their own in every command: --env and --preset.
OWN_OPTIONS = ("env_id", "preset")


class OrPreset(click.ParamType):
    """A value of the field's type, or the word 'preset' (MLproject's default: use the preset's value)."""

    def convert(self, value, param, ctx):
        if value is None or value == PRESET:
            return None
        return self.parse(value, param, ctx)

    def parse(self, value, param, ctx):
        raise NotImplementedError  # each subclass converts its own type


class IntOrPreset(OrPreset):
    name = "integer"

    def __init__(self, minimum: int | None = None):
        self.minimum = minimum

    def parse(self, value, param, ctx):
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not an integer", param, ctx)
        if self.minimum is not None and number < self.minimum:
            self.fail(f"{number} is not >= {self.minimum}", param, ctx)
        return number


class FloatOrPreset(OrPreset):
    name = "number"

    def parse(self, value, param, ctx):
        try:
            return float(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not a number", param, ctx)


class BoolOrPreset(OrPreset):
    name = "true|false"

    def parse(self, value, param, ctx):
        return click.BOOL.convert(value, param, ctx)


class IntListOrPreset(OrPreset):
    name = "N,N,..."

    def parse(self, value, param, ctx):
        try:
            return [int(part) for part in str(value).strip("[]").split(",") if part.strip()]
        except ValueError:
            self.fail(f"'{value}' is not a comma-separated list of integers such as 256,256", param, ctx)


class ChoiceOrPreset(click.Choice):
    def convert(self, value, param, ctx):
        return None if value in (None, PRESET) else super().convert(value, param, ctx)


class TextOrPreset(OrPreset):
    """ent_coef: 'auto', 'auto_0.1' or a number, as SB3 spells it; numbers become numbers."""

    name = "text"

    def parse(self, value, param, ctx):
        try:
            return float(value)
        except ValueError:
            return str(value)


def option_type(field: dataclasses.Field) -> click.ParamType:
    rule = field_rule(field.name)
    if rule is not None and rule.choices:
        return ChoiceOrPreset(rule.choices)
    if field.type == "bool":
        return BoolOrPreset()
    if field.type == "int":
        return IntOrPreset(rule.minimum if rule else None)
    if field.type == "float":
        return FloatOrPreset()
    if field.type.startswith("tuple"):
        return IntListOrPreset()
    return TextOrPreset()


def plain_text(doc: str) -> str:
    """A docstring's reST markup (``code``, :class:`x`) as the terminal shows it."""
    return re.sub(r":\w+:`([^`]*)`", r"\1", doc).replace("``", "")


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_fields(leave_out: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    """The fields a command takes as options: all but --env/--preset and those the command sets itself."""
    return [f for f in dataclasses.fields(TrainConfig) if f.name not in (*OWN_OPTIONS, *leave_out)]


def config_options(leave_out: tuple[str, ...] = ()):
    """Decorate a click command with one option per config field (see the module's docstring)."""
    docs = field_docs()

    def decorate(command):
        for field in reversed(config_fields(leave_out)):
            kind = option_type(field)
            command = click.option(
                option_flag(field.name),
                field.name,
                type=kind,
                # a bare boolean flag (--her) means true; --her false|0|no too
                **({"is_flag": False, "flag_value": "true"} if isinstance(kind, BoolOrPreset) else {}),
                default=None,
                help=f"{plain_text(docs[field.name])} [default: the preset's, else {format_default(field.default)}]",
            )(command)
        return command

    return decorate


def format_default(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def take_config_options(options: dict, leave_out: tuple[str, ...] = ()) -> dict:
    """Remove the config fields' values from a command's keyword arguments: the overrides (None: not given)."""
    return {f.name: options.pop(f.name) for f in config_fields(leave_out)}
