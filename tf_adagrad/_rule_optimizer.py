"""What the three framework adapters share: an optimizer class on an update
rule, its checks, docstring and repr."""

import textwrap

from tf_adagrad._arguments import non_negative_real
from tf_adagrad._variables import require_dtype

_PLACEHOLDER = "{{base_optimizer_keyword_args}}"


class RuleOptimizer:
    """Mixin of the adapters (before the framework's optimizer class): a
    public class sets `rule` (`tf_adagrad/_update_rules.py`); the adapter
    sets `framework` (for the repr) and `base_arguments` (the framework's
    own text of its optimizers' shared arguments, which fills the
    `{{base_optimizer_keyword_args}}` line of a docstring, as Keras' own
    optimizers fill theirs)."""

    rule = None
    framework = None
    base_arguments = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__doc__ and _PLACEHOLDER in cls.__doc__:
            indent = cls.__doc__[: cls.__doc__.index(_PLACEHOLDER)].rsplit("\n", 1)[-1]
            first, _, rest = cls.base_arguments.strip().partition("\n")
            text = f"{first}\n{textwrap.indent(textwrap.dedent(rest), indent)}".rstrip()
            cls.__doc__ = cls.__doc__.replace(_PLACEHOLDER, text)

    @staticmethod
    def _checked(initial_accumulator_value, epsilon):
        return (
            non_negative_real("initial_accumulator_value", initial_accumulator_value),
            non_negative_real("epsilon", epsilon),
        )

    def _check_dtypes(self, var_list):
        for variable in var_list:
            require_dtype(variable, f"{public_name(type(self))}'s variable", self.rule.dtypes())

    def __repr__(self):
        name = getattr(self, "_name", None) or self.name  # OptimizerV2 has only _name
        return f"<{public_name(type(self))} name={name!r}: {self.framework}>"


def with_arguments(base_arguments, *argument_docs):
    """A framework's text of its optimizers' shared arguments, with the
    texts of more arguments after them, at their indentation."""
    lines = base_arguments.rstrip().split("\n")
    indent = min(len(line) - len(line.lstrip()) for line in lines[1:] if line.strip())
    return "\n".join(lines + [textwrap.indent(doc, " " * indent) for doc in argument_docs])


def public_name(cls):
    """How users reach the first tf_adagrad class in `cls`'s MRO, e.g.
    `tf_adagrad.keras2.Adagrad` for `tf_adagrad.keras2.adagrad.Adagrad`
    (each public class's module is its package's, plus the file's name)."""
    ours = next(c for c in cls.__mro__ if c.__module__.startswith("tf_adagrad."))
    return f"{ours.__module__.rsplit('.', 1)[0]}.{ours.__qualname__}"
