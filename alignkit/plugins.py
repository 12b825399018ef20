"""Plugins: modules that add rewards, judges, prompt sets and named models to alignkit.

A plugin is a module that, when imported, registers what it brings with the core's
registries, the way any user's package would:

    alignkit.rewards.register(name, summary, ...)        a reward factory
    alignkit.judges.register_judge(name, f)              an independent judge
    alignkit.prompts.register_prompt_set(name, f)        a prompt set
    alignkit.models.register_model(NamedModel(...))      a named model and its defaults
    alignkit.detectors.register_detector(name, f)        a bundled detector (`count`'s default)

The core never imports a plugin by name anywhere else: this is the one place that lists
them. `load_plugins()` imports the built-in ones (the embedded toy world) and every module
named by an installed package's `alignkit.plugins` entry point, once. The entry points call
it explicitly (every CLI command, before it runs); the registries call it only when asked
for something the core lacks (a name it does not have, the full list, the default detector),
so that `load_reward("compress")` imports neither the toy nor evaluation.
"""

from __future__ import annotations

import importlib

from alignkit.errors import AlignkitError

# Plugins that ship inside alignkit.
BUILTIN = ("alignkit.toy.plugin",)
# Other packages add theirs with `[project.entry-points."alignkit.plugins"] name = "module"`.
ENTRY_POINT_GROUP = "alignkit.plugins"

_state = "unloaded"


def load_plugins() -> None:
    """Import every plugin once (a no-op afterwards, and while they are being imported)."""
    global _state
    if _state != "unloaded":
        return
    _state = "loading"
    try:
        for name in BUILTIN:
            importlib.import_module(name)
        from importlib.metadata import entry_points

        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry.load()
            except Exception as exc:  # a broken third-party plugin: one line naming it
                raise AlignkitError(f"alignkit plugin '{entry.name}' ({entry.value}) failed to load: "
                                    f"{type(exc).__name__}: {exc}") from None
    finally:
        _state = "loaded"
