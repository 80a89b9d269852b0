"""Running an :class:`~repedit.hooks.EditableModel`: the forward, ``generate`` with text in and
text out, and ``capture``, which records the states at a site and stops the forward there (a
mixin; :mod:`repedit.hooks` owns the hooks it uses).

Example::

    h, mask = edited.capture(5, "block_output", encode(tok, ["The Eiffel Tower is in"]))
    texts = edited.generate(["The Eiffel Tower is in"], max_new_tokens=8)
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch

from repedit.arch import COMPONENTS
from repedit.positions import Positions, encode
from repedit.sites import _CaptureDone, _Probe

__all__ = ["RunMixin"]


class RunMixin:
    """``forward``, ``capture`` and ``generate`` of :class:`~repedit.hooks.EditableModel`."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(
        self,
        prompts: Sequence[str] | None = None,
        subjects: Sequence[str | None] | None = None,
        decode: bool = True,
        **kwargs: Any,
    ) -> Any:
        """``model.generate`` with the interventions; text in, text out when ``prompts`` given.

        Position rules during generation: ``last_prompt``, ``prompt`` and ``subject``
        act in the prefill forward only (the KV cache then carries their effect);
        ``all`` also acts on every newly generated token. An active ``subject``-rule
        intervention needs ``subjects`` (one per prompt; ``None`` for a prompt the edit should
        skip): without them it raises instead of silently editing nothing.

        Example::

            texts = edited.generate(["The Eiffel Tower is in"], subjects=["Eiffel Tower"], max_new_tokens=8)
        """
        if prompts is None:
            return self.model.generate(**kwargs)
        if self.tokenizer is None:
            raise ValueError("generate(prompts=...) needs a tokenizer: wrap(model, tokenizer)")
        if isinstance(prompts, str):
            prompts = [prompts]
        if subjects is None and not self._local.disabled:
            need = [a.name for a in self.attachments() if a.active and a.positions is Positions.SUBJECT]
            if need:
                raise ValueError(
                    f"interventions {need} act on the subject's tokens (positions='subject'), but generate() got "
                    "no subjects: pass subjects=[...] (one per prompt, None to skip one)")
        batch = encode(self.tokenizer, list(prompts), subjects=subjects, padding_side="left")
        empty = [i for i, n in enumerate(batch.attention_mask.sum(dim=1).tolist()) if n == 0]
        if empty:
            raise ValueError(f"prompts {empty} are empty (no tokens); give non-empty prompts")
        device = next(self.model.parameters()).device
        batch = batch.to(device)
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("max_new_tokens", 16)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        kwargs.setdefault("pad_token_id", pad)
        with batch.info():
            out = self.model.generate(**batch.model_inputs(), **kwargs)
        if not decode:
            return out
        new = out[:, batch.input_ids.shape[1] :]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def capture(
        self,
        layer: int,
        component: str,
        batch: Any,
        before: str | None = None,
        positions: str | Positions | None = None,
        stop: bool = True,
        edited: bool = False,
        with_context: bool = False,
    ) -> tuple:
        """Run ``batch`` (an :class:`~repedit.positions.EncodedBatch`) and return the hidden
        states at a site and a position mask, ``(h (B, T, d), mask (B, T))``, stopping the
        forward there when ``stop`` (baukit's ``Trace(stop=True)``; later layers are skipped).

        ``h`` is the site's output entering the intervention named ``before`` (its positions
        give the mask) or, without ``before``, after the site's interventions; ``positions``
        (default ``all``) names the mask's rule otherwise. With ``edited=False`` no
        intervention runs (the unedited model's states). ``with_context`` adds the forward's
        :class:`ForwardContext` as a third element. No gradient is recorded.

        Example::

            h, mask = edited.capture(5, "block_output", encode(tok, ["The Eiffel Tower is in"]))
        """
        if not self._attached:
            raise RuntimeError("capture needs the hooks: this EditableModel was unwrapped")
        if before is not None:
            att = self.get(before)
            site, rule = att.site, Positions.parse(positions) if positions is not None else att.positions
        else:
            if component not in COMPONENTS:
                raise ValueError(f"unknown component {component!r}; choose one of: {', '.join(COMPONENTS)}")
            site, rule = (layer % self.num_layers, component), Positions.parse(positions) if positions is not None else None
        added = site not in self._site_handles
        self._ensure_site(site)
        probe = _Probe(site, before, rule, stop)
        local = self._local
        local.probe = probe
        try:
            with torch.no_grad(), (contextlib.nullcontext() if edited else self.disabled()), batch.info():
                self.model(**batch.model_inputs())
        except _CaptureDone:
            self.abort_forward()
        finally:
            local.probe = None
            if added:
                self._drop_site_if_unused(site)
        if "h" not in probe.store:
            raise RuntimeError(f"the forward did not reach layer {site[0]} {site[1]}; is the model wrapped?")
        out = (probe.store["h"], probe.store["mask"])
        return out + (probe.store["ctx"],) if with_context else out
