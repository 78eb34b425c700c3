"""Which pip extra brings a missing module: the one-line hint a command prints instead of a
traceback when ``pip install .`` left out what it needs.

The extras themselves are declared in pyproject.toml; this table names, for each third-party
module that fastps imports outside its base dependency (numpy), the smallest extra that
installs it. A command that knows its own extra (``fastps train`` -> "train", a benchmark ->
"bench") names that one when the module is in it, so the user installs one extra that covers
the whole command.
"""

from __future__ import annotations

COVERS = {
    "torch": {"torch"},
    "train": {"torch", "tqdm", "sklearn", "mlxtend"},
    "bench": {"torch", "matplotlib", "pynvml"},
    "peers": {"torch", "ray", "matplotlib", "sklearn", "mlxtend", "tqdm"},
    "ray": {"ray"},
    "test": {"torch", "tqdm", "sklearn", "mlxtend", "ray"},
}
"""Extra -> the third-party modules it installs beyond numpy (pyproject.toml's extras, by
module name; a test keeps the two in step)."""

EXTRA_OF = {
    module: min((e for e, mods in COVERS.items() if module in mods and e != "test"), key=lambda e: len(COVERS[e]))
    for module in set().union(*COVERS.values())
}  # fmt: skip
"""Top-level module -> the smallest user-facing extra that installs it (not "test")."""


def missing_module(exc: BaseException) -> str | None:
    """The top-level third-party module whose absence raised ``exc``, or None when ``exc`` is
    not a ModuleNotFoundError for a module some extra installs (fastps's own modules, a typo
    in user code and unknown modules are not ours to explain)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    return top if top in EXTRA_OF else None


def install_hint(module: str, extra: str | None = None) -> str:
    """``pip install "fastps[EXTRA]"`` for ``module``: ``extra`` (the command's own) when it
    installs the module, else the smallest extra that does."""
    if extra is None or module not in COVERS.get(extra, set()):
        extra = EXTRA_OF[module]
    return f'pip install "fastps[{extra}]"'


def hint(exc: BaseException, who: str, extra: str | None = None) -> str | None:
    """One line for a user whose command ``who`` failed on a missing module, or None when
    ``exc`` is not that (see ``missing_module``)."""
    module = missing_module(exc)
    if module is None:
        return None
    return (
        f"{who}: needs the module {module!r}, which is not installed: {install_hint(module, extra)}"
    )


def require(module: str, who: str, extra: str | None = None) -> None:
    """Import ``module`` or raise ModuleNotFoundError whose message is the install hint (for a
    package such as fastps.ray whose import needs a third-party module)."""
    import importlib

    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        line = hint(e, who, extra)
        if line is None:
            raise
        raise ModuleNotFoundError(line, name=e.name) from e


__all__ = ["COVERS", "EXTRA_OF", "hint", "install_hint", "missing_module", "require"]
