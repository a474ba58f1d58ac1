"""JAX's persistent compilation cache, for runs that repeat or resume.

A compiled XLA program is written to disk under a key of its computation, the
compiler options, the devices and the jax/jaxlib versions; a later process that
compiles the same program reads it back instead of compiling (what the ``leads`` CLI
and the benchmarks use; ``benchmarks/fit_compile.py`` measures the saving). It is
**off** unless asked for: by :func:`enable_compilation_cache` with a path, by the
environment variable ``LEADS_JAX_CACHE_DIR`` (read by that function), or by
``leads --compile-cache DIR``. The test suite never enables it.

Two limits. JAX never reads a program that contains a host callback from the cache,
and equinox's runtime checks (``eqx.error_if``, used inside diffrax) are host callbacks
unless ``EQX_ON_ERROR=nan`` (or ``off``) is set in the environment *before* equinox is
imported, or :func:`cacheable_runtime_checks` is called before the first fit (the
``leads`` CLI does so whenever its cache is on): then a failed check gives NaN, which the
fitting engine records as divergence. And the cache saves compilation, not tracing: each
program is still traced and lowered to compute its key, which for the fitting engine's
large programs is most of a warm run. So the engine also keeps those programs, traced
and lowered, as exported StableHLO (``jax.export``) in ``<folder>/leads_jax_exported/``,
and a later process calls them without tracing (:mod:`leads_jax.fit._programs` says
exactly when a program is reused; ``export_programs=False`` turns this off).
"""

from __future__ import annotations

import os
import pathlib
import warnings

import jax

__all__ = ["CACHE_ENV", "cacheable_runtime_checks", "enable_compilation_cache",
           "exported_programs_folder"]

CACHE_ENV = "LEADS_JAX_CACHE_DIR"
_EXPORT = False  # set by enable_compilation_cache(export_programs=...)


def exported_programs_folder() -> pathlib.Path | None:
    """Where the fitting engine keeps its exported programs: ``leads_jax_exported/`` in
    JAX's cache folder, once :func:`enable_compilation_cache` switched both on (``None``
    otherwise, the default)."""
    folder = jax.config.jax_compilation_cache_dir
    if not _EXPORT or not folder:
        return None
    return pathlib.Path(folder) / "leads_jax_exported"


def enable_compilation_cache(path: str | os.PathLike | None = None, *,
                             min_compile_time_secs: float = 0.0,
                             export_programs: bool = True) -> pathlib.Path | None:
    """Switch JAX's persistent compilation cache on, in folder `path` (created).

    `path=None` reads ``$LEADS_JAX_CACHE_DIR``; when that is unset or empty too, nothing
    changes and ``None`` is returned. Programs that took at least
    `min_compile_time_secs` to compile are written (default 0: all, since a fitting run
    also compiles many small programs). Call it before the first JAX computation: JAX
    decides whether to use the cache at its first compilation. With `export_programs`
    (default) the fitting engine's training and evaluation programs are also kept in
    ``<path>/leads_jax_exported/`` so that a new process does not trace them again.
    Those two programs only enter the cache with equinox's runtime checks as NaN: set
    ``EQX_ON_ERROR=nan`` before importing equinox, or call
    :func:`cacheable_runtime_checks` before the first fit (this function changes
    neither).

    **Returns:** the cache folder, or ``None`` when the cache stays off.
    """
    if path is None:
        path = os.environ.get(CACHE_ENV) or None
        if path is None:
            return None
    folder = pathlib.Path(path).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"compilation cache folder {str(folder)!r} cannot be created: {e}") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"compilation cache folder {str(folder)!r} is not writable")
    if not min_compile_time_secs >= 0:
        raise ValueError(f"min_compile_time_secs must be >= 0; got {min_compile_time_secs}")
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    global _EXPORT
    _EXPORT = bool(export_programs)
    return folder


def cacheable_runtime_checks() -> str:
    """Make equinox's runtime checks return NaN (``EQX_ON_ERROR=nan``) in this process, so
    that the fitting engine's programs can enter the persistent cache and be exported.

    For a program of your own process (the ``leads`` CLI calls it when the cache is on;
    the benchmarks set the variable before importing). ``EQX_ON_ERROR`` is read by
    equinox at import, so setting the variable afterwards changes nothing; this sets
    the value equinox's ``error_if`` reads when it is traced, and the variable, for
    child processes. Call it before the first fit: programs traced earlier keep their
    host callbacks. A failed check then gives NaN, which the engine records as
    divergence, instead of raising. An ``EQX_ON_ERROR`` already in the environment is
    the user's choice and is kept (with a warning when it keeps programs out of the
    cache).

    **Returns:** the mode in force (``"nan"``, or the environment's value).
    """
    import equinox._errors as eqx_errors

    mine = os.environ.get("EQX_ON_ERROR")
    if mine:
        if mine not in ("nan", "off"):
            warnings.warn(f"EQX_ON_ERROR={mine} (from the environment): equinox's runtime "
                          "checks are host callbacks, which JAX never caches, so the fitting "
                          "engine's large programs are compiled again in every process; set "
                          "EQX_ON_ERROR=nan to cache them", stacklevel=2)
        return mine
    eqx_errors.EQX_ON_ERROR = "nan"
    os.environ["EQX_ON_ERROR"] = "nan"
    return "nan"
