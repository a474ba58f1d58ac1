"""Saving and loading fitted candidates (atomic writes).

A candidate file is ONE file so it can be replaced atomically: a first line of
JSON (format version, the structure JSON, free metadata such as errors and the
stability verdict) followed by the model's array leaves written by
``eqx.tree_serialise_leaves``. Loading rebuilds the skeleton of the model from
the structure (``compile_structure``) — or takes a skeleton `like=` for models
that are not sentences of the grammar — and reads the leaves into it, so the
loaded model gives identical predictions.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import tempfile

import equinox as eqx
import jax
import numpy as np

from ..compile import compile_structure
from ..structure import Structure

FORMAT = "leads-jax-candidate/1"


def _structure_json(structure) -> str:
    if structure is None:
        return "null"
    if isinstance(structure, Structure):
        return structure.to_json()
    if isinstance(structure, str):
        json.loads(structure)  # must be JSON
        return structure
    return json.dumps(structure)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file in the same folder, then os.replace)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_candidate(path, model, structure=None, *, metadata: dict | None = None) -> pathlib.Path:
    """Save one fitted candidate: its structure JSON, metadata and model leaves, atomically.

    **Arguments:**

    - `path`: the file to write (conventionally ``<name>.eqx``).
    - `model`: the fitted model (one member, not a stacked batch).
    - `structure`: a ``Structure`` (anything with ``to_json()``), a JSON string, a
      JSON-able object, or None.
    - `metadata`: JSON-able extras (errors, verdict, fit time...).
    """
    header = {
        "format": FORMAT,
        "structure": json.loads(_structure_json(structure)),
        "metadata": metadata or {},
    }
    buf = io.BytesIO()
    buf.write(json.dumps(header, sort_keys=True, default=_json_default).encode() + b"\n")
    eqx.tree_serialise_leaves(buf, model)
    atomic_write_bytes(path, buf.getvalue())
    return pathlib.Path(path)


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    raise TypeError(f"metadata value {x!r} is not JSON-serialisable")


def read_candidate_header(path) -> dict:
    """The JSON header of a candidate file: ``{"format", "structure", "metadata"}``."""
    with open(path, "rb") as f:
        line = f.readline()
    try:
        header = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a leads-jax candidate file (bad header: {e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a leads-jax candidate file (format {FORMAT!r} expected)")
    return header


def load_candidate(path, geometry=None, *, like=None):
    """Load a candidate saved by :func:`save_candidate`.

    Either `like` (a model with the same pytree structure, e.g. from
    ``compile_structure``) or `geometry` (the structure is then recompiled on it)
    must be given. Returns ``(structure, model, metadata)`` where `structure` is a
    ``Structure`` when the grammar can parse it, else the raw JSON object.
    """
    header = read_candidate_header(path)
    structure = header["structure"]
    if like is None:
        if geometry is None:
            raise ValueError(
                "load_candidate needs `geometry` (to recompile the structure) or `like`"
            )
        structure = Structure.from_json(json.dumps(structure))
        like = compile_structure(structure, geometry, key=jax.random.key(0))
    else:
        try:
            structure = Structure.from_json(json.dumps(structure))
        except (ValueError, TypeError):
            pass
    with open(path, "rb") as f:
        f.readline()
        model = eqx.tree_deserialise_leaves(f, like)
    return structure, model, header["metadata"]
