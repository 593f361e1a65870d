"""The building blocks of every config section: errors, fields, the checks they share, and the JSON helpers.

Each field is declared once, with its default and its meaning (`field`); the
`tf-ppo` flags' help and the configuration reference (docs/configuration.md)
are both derived from that (`tf_ppo.config.reference`). Every value is checked
against its field's annotation (`check_fields`), and the shipped data files are
recorded in JSON by a portable name (`shipped:train_data.csv`, `portable`).
"""

import dataclasses
import difflib
import importlib.util
import numbers
import pathlib
import types
import typing
import warnings


class ConfigError(ValueError):
    """A config value that breaks a constraint; the message names the field (`PPOConfig.cliprange ...`)."""


class UnknownFieldError(ConfigError, TypeError):
    """A field name the config does not have (a TypeError too, as Python's own unexpected-keyword error is)."""


# Both are shown as tf_ppo.config.<name>, the module users import them from (tracebacks, doctests, pickles).
ConfigError.__module__ = UnknownFieldError.__module__ = "tf_ppo.config"


def _shipped_data_dir():
    # An installed tf_ppo ships data/ as the package `tf_ppo_data` (setup.cfg maps it); an editable
    # install made before that mapping existed only has the source checkout's data/ beside tf_ppo/.
    spec = importlib.util.find_spec("tf_ppo_data")
    if spec is not None and spec.submodule_search_locations:
        return pathlib.Path(next(iter(spec.submodule_search_locations))).resolve()
    return pathlib.Path(__file__).resolve().parents[2] / "data"


DATA_DIR = _shipped_data_dir()
SHIPPED = "shipped:"  # config.json spells a shipped data file "shipped:<name>", portable across machines
OBJECT_MARK = "<object "


def field(default=dataclasses.MISSING, doc="", factory=dataclasses.MISSING):
    """A dataclass field with its meaning in `metadata["help"]`: the one source of the CLI help and reference table."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": doc})


class _CheckedType(type):
    def __call__(cls, *args, **kwargs):
        # Before __init__, so PPOConfig(**kw), replace() and from_json all rename an alias and name a typo
        # the same way.
        kwargs = _renamed_aliases(cls, kwargs)
        _check_names(cls, kwargs)
        return super().__call__(*args, **kwargs)


class Checked(metaclass=_CheckedType):
    """Base of the config sections: unknown keyword arguments are an error that suggests the near miss.

    A section's `aliases` maps another name to its field (a deprecated one, or
    TRL's): given as a keyword argument or read as an attribute, it warns and
    stands for the field. `not_fields` maps a name users bring from elsewhere
    (TRL) that means something else here to the message that says what to use.
    """

    aliases = {}
    not_fields = {}


class Alias:
    """The attribute `config.<alias>`: the value of its field, with a FutureWarning that names the field.

    Declared once per entry of the class's `aliases`.

    Example:
        kl_coef = Alias("beta")  # in the class body; `config.kl_coef` reads `config.beta`
    """

    def __init__(self, name):
        self.name = name

    def __set_name__(self, owner, alias):
        self.alias = alias

    def __get__(self, config, owner=None):
        if config is None:
            return self
        warn_alias(owner, self.alias, self.name, stacklevel=3)
        return getattr(config, self.name)


def warn_alias(cls, alias, name, stacklevel):
    warnings.warn(f"{cls.__name__}.{alias} is read as {name} (an alias); use {name}", FutureWarning,
                  stacklevel=stacklevel)


def _renamed_aliases(cls, values):
    """`values` with each alias renamed to its field (warns); both names with other values: an error."""
    values = dict(values)
    for alias, name in cls.aliases.items():
        if alias not in values:
            continue
        value = values.pop(alias)
        if name in values and values[name] not in (value, default(cls, name)):
            raise ConfigError(f"{cls.__name__}: {alias}={value!r} and {name}={values[name]!r} are one field "
                              f"({alias} is an alias of {name}); give only {name}")
        warn_alias(cls, alias, name, stacklevel=4)  # the caller of PPOConfig(...)
        values[name] = value
    return values


# --- validation

def default(cls, name):
    """The default of the field `name` of the dataclass `cls`."""
    return next(field.default for field in dataclasses.fields(cls) if field.name == name)


def fail(config, name, message):
    raise ConfigError(f"{type(config).__name__}.{name} {message}")


def did_you_mean(name, choices):
    """" (did you mean 'kl_coef'?)" when `name` is a near miss of one of `choices`, else "".

    Example:
    >>> did_you_mean("kl_cof", ["kl_coef", "gamma"])
    " (did you mean 'kl_coef'?)"
    >>> did_you_mean("--target", ["--target_kl"])
    " (did you mean '--target_kl'?)"
    """
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_names(cls, values):
    for name in values:
        if name in cls.not_fields:
            raise UnknownFieldError(f"{cls.__name__}: {name} is not a field here: {cls.not_fields[name]}")
    known = [field.name for field in dataclasses.fields(cls)]
    unknown = [name for name in values if name not in known]
    if unknown:  # a near miss of an alias suggests its field: 'kl_cof' -> 'beta'
        close = {name: difflib.get_close_matches(name, known + list(cls.aliases), n=1) for name in unknown}
        described = ", ".join(f"{name!r}" + (f" (did you mean {cls.aliases.get(match[0], match[0])!r}?)" if match
                                             else "") for name, match in close.items())
        raise UnknownFieldError(f"{cls.__name__}: unknown field{'s' if len(unknown) > 1 else ''} {described}")


def check_fields(config):
    """Shipped names resolved to their files, then each value checked against its field's annotation."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, str) and value.startswith(SHIPPED):
            object.__setattr__(config, field.name, _shipped_path(config, field.name, value))
        check_type(config, field.name, field.type)


def _shipped_path(config, name, value):
    path = DATA_DIR / value[len(SHIPPED):]
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in DATA_DIR.iterdir() if p.is_file()))
        fail(config, name, f"names a shipped file that does not exist: {value!r} (shipped: {shipped})")
    return str(path)


def split_optional(annotation):
    """`(type, optional)` of a field annotation: `float | None` -> `(float, True)`.

    Example:
    >>> split_optional(float | None), split_optional(bool)
    ((<class 'float'>, True), (<class 'bool'>, False))
    """
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
        return kinds[0], len(kinds) < len(typing.get_args(annotation))
    return annotation, False


TYPE_WORDS = {bool: "a bool (true/false)", int: "an integer", float: "a number", str: "a string",
              tuple: "a list of numbers"}


def check_type(config, name, annotation):
    value = getattr(config, name)
    kind, optional = split_optional(annotation)
    if (value is None and optional) or _is_a(value, kind):
        return
    word = TYPE_WORDS.get(kind, f"a {kind.__name__}")
    fail(config, name, f"must be {word}{' or None' if optional else ''}, got {value!r}")


def _is_a(value, kind):
    if kind is bool:
        return isinstance(value, bool)
    if kind is tuple:  # a list of numbers (reward_weights)
        return isinstance(value, tuple) and all(_is_a(item, float) for item in value)
    if kind in (int, float):  # numpy scalars count; bools do not, an int counts as a float
        number = numbers.Integral if kind is int else numbers.Real
        return isinstance(value, number) and not isinstance(value, bool)
    return isinstance(value, kind)


def is_missing_directory(preset):
    # keras-hub reads a value with a path separator or a leading '.' as a directory, not a preset
    # name; "kaggle://..." and "hf://..." are handles.
    if not isinstance(preset, str) or "://" in preset or preset.startswith(OBJECT_MARK):
        return False
    return ("/" in preset or preset.startswith(".")) and not pathlib.Path(preset).exists()


def check_positive(config, name):
    value = getattr(config, name)
    if not value > 0:
        fail(config, name, f"must be a positive number, got {value!r}")


def check_range(config, name, low, high, include_low=True, include_high=True):
    value = getattr(config, name)
    above = value >= low if include_low else value > low
    below = value <= high if include_high else value < high
    if not (above and below):
        left, right = "[" if include_low else "(", "]" if include_high else ")"
        fail(config, name, f"must be in {left}{low}, {high}{right}, got {value!r}")


def check_choice(config, name, choices):
    if getattr(config, name) not in choices:
        fail(config, name, f"must be one of {choices}, got {getattr(config, name)!r}")


# --- JSON

def as_dict(config):
    # Not dataclasses.asdict: it deep-copies every value, a whole Keras model included.
    values = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            value = as_dict(value)
        elif isinstance(value, str):
            value = portable(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif value is not None and not isinstance(value, (int, float, bool)):
            value = f"{OBJECT_MARK}{type(value).__name__}>"
        values[field.name] = value
    return values


def portable(value):
    """A path inside the shipped data as `shipped:<name>` (what config.json records), anything else unchanged.

    Example:
    >>> portable(str(DATA_DIR / "vocab.json")), portable("tfds:imdb_reviews")
    ('shipped:vocab.json', 'tfds:imdb_reviews')
    """
    path = pathlib.PurePath(value)
    if path.is_absolute() and path.is_relative_to(DATA_DIR) and path != DATA_DIR:
        return SHIPPED + path.relative_to(DATA_DIR).as_posix()
    return value
