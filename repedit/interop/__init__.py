"""Reading and writing other libraries' intervention formats.

So far: pyreft / pyvene LoReFT directories (:mod:`repedit.interop.pyreft`).

Example::

    from repedit.interop import read_pyreft, write_pyreft
    edited = read_pyreft("./reft-dir", model, tokenizer, positions="last_prompt")
    write_pyreft(edited, "./exported-reft")
"""

from __future__ import annotations

from repedit.interop.pyreft import (
    LOREFT_CLASS,
    PyreftIntervention,
    inspect_pyreft,
    read_pyreft,
    write_pyreft,
)

__all__ = ["read_pyreft", "write_pyreft", "inspect_pyreft", "PyreftIntervention", "LOREFT_CLASS"]
