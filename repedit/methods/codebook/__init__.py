"""Codebook editing (GRACE / BalancEdit) as a representation intervention.

Entries (key, value, radius) live at one site. At inference the nearest key is found per
example in one matrix product; within the entry's radius (times ``radius_scale``) the value
changes the representation, otherwise the model runs unchanged. Radii come either from the
entry's own positive and negative samples (``radius_mode="balanced"``, BalancEdit's
``eps = (1 - alpha) d(k, k-) + alpha d(k, k+)``) or from GRACE's fixed radius with its
expand/split rules (``radius_mode="grace"``).

Example::

    from repedit import Editor, EditorConfig
    editor = Editor(model, tok, EditorConfig(method="codebook", layers=[5], lr=0.05))
    result = editor.edit(requests, sequential=True)
    from repedit.methods.codebook import manage
    manage.list_entries(result.edited)
    manage.explain(result.edited, "The mother tongue of Danielle Darrieux is")
"""

from repedit.methods import register_method
from repedit.methods.codebook.config import CodebookConfig
from repedit.methods.codebook.module import Codebook

register_method("codebook", CodebookConfig, Codebook)

__all__ = ["Codebook", "CodebookConfig"]
