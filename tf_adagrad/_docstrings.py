"""The public classes' docstrings and names."""

import textwrap

PLACEHOLDER = "{{base_optimizer_keyword_args}}"


def with_base_arguments(docstring, base_arguments):
    """`docstring` with its `{{base_optimizer_keyword_args}}` line filled by
    `base_arguments`, the framework's own text for its optimizers' shared
    arguments (Keras' optimizers fill theirs the same way), re-indented."""
    if not docstring or PLACEHOLDER not in docstring:
        return docstring
    indent = docstring[: docstring.index(PLACEHOLDER)].rsplit("\n", 1)[-1]
    first, _, rest = base_arguments.strip().partition("\n")
    rest = textwrap.indent(textwrap.dedent(rest), indent)
    return docstring.replace(PLACEHOLDER, f"{first}\n{rest}" if rest else first)


def public_name(cls):
    """How users reach the first tf_adagrad class in `cls`'s MRO, e.g.
    `tf_adagrad.keras2.Adagrad` for `tf_adagrad.keras2.adagrad.Adagrad`
    (each public class's module is its package's, plus the file's name)."""
    ours = next(c for c in cls.__mro__ if c.__module__.startswith("tf_adagrad."))
    return f"{ours.__module__.rsplit('.', 1)[0]}.{ours.__qualname__}"
