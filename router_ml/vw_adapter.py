"""The one module that talks to vowpal-wabbit-next: a ``--cb_explore_adf`` workspace over a fixed set of actions.

:class:`CBModel` takes feature groups (namespace -> indices and values, :mod:`router_ml.features`) and action
positions, and answers with VW's distribution over the offered actions; it learns from one labelled choice at a time.
Nothing else in the project imports ``vowpal_wabbit_next``.

Two paths run the same VW calls on the same examples:

- the **fast path** calls vw-next's private core (``Workspace._workspace``, ``Example._example``) directly. Its public
  wrapper re-checks the label type of every example (32 on the shared benchmark) on each call, which cost more than
  VW's own work for a routing decision; this is why vowpal-wabbit-next is pinned.
- the **public path** goes through ``Workspace.predict_one`` / ``predict_then_learn_one``. It is taken when the private
  core is missing (another vw-next version) or when asked for (``fast=False``); ``tests/test_vw_adapter.py`` checks
  that both give the same model bytes and distributions after the same updates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import vowpal_wabbit_next as vw

Groups = Mapping[str, tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]]
"""Feature groups of one example: namespace -> (feature indices, values)."""
ActionProbs = list[tuple[int, float]]
"""VW's ``cb_explore_adf`` prediction: (position among the offered actions, probability), most likely first."""

_NO_LABEL = vw.CBLabel()
_SHARED = vw.CBLabel(shared=True)


def _example(groups: Groups, label: vw.CBLabel) -> vw.Example:
    ex = vw.Example()
    for ns, (idx, val) in groups.items():
        ex[ns].push_many_features(idx, val)  # type: ignore[arg-type]  # vw-next's stub mistypes ndarray
    ex.set_label(label)
    return ex


class CBModel:
    """A VW contextual-bandit workspace with one prebuilt example per action.

    Action examples never change, so they are built once; VW restores them after every call (shared features are
    merged in and taken out again), and only the chosen one's label is set, for the length of a learn call.
    Not thread-safe: one owner at a time.
    """

    def __init__(
        self,
        args: Sequence[str],
        actions: Sequence[Groups],
        model_bytes: bytes | None = None,
        *,
        fast: bool | None = None,
    ) -> None:
        self._ws = vw.Workspace(list(args), model_data=model_bytes) if model_bytes else vw.Workspace(list(args))
        self._actions = [_example(a, _NO_LABEL) for a in actions]
        self.fast = self._has_core() if fast is None else fast
        if self.fast and not self._has_core():
            raise RuntimeError("vw-next: this version has no private core to take the fast path")

    def _has_core(self) -> bool:
        """Whether the installed vw-next exposes the private core the fast path calls."""
        core = getattr(self._ws, "_workspace", None)
        calls = ("predict_multi_ex_one", "predict_then_learn_multi_ex_one")
        return all(hasattr(core, c) for c in calls) and all(hasattr(a, "_example") for a in self._actions)

    def shared(self, groups: Groups) -> Any:
        """The shared (context) example for ``groups``, in the form :meth:`predict` and :meth:`learn` take; callers
        may keep it to reuse across calls."""
        ex = _example(groups, _SHARED)
        return ex._example if self.fast else ex

    def offered(self, actions: Sequence[int]) -> list[Any]:
        """The examples of the offered actions (positions in the action list), in order; callers may keep the list."""
        return [self._actions[a]._example if self.fast else self._actions[a] for a in actions]

    def predict(self, shared: Any, offered: list[Any]) -> ActionProbs:
        """VW's distribution over ``offered`` for the context ``shared``."""
        examples = [shared, *offered]
        if self.fast:
            return cast(ActionProbs, self._ws._workspace.predict_multi_ex_one(examples))
        return cast(ActionProbs, self._ws.predict_one(examples))

    def learn(self, shared: Any, offered: list[Any], action: int, cost: float, probability: float) -> ActionProbs:
        """Predict, then learn that ``action`` (one of ``offered``) cost ``cost`` and was chosen with ``probability``;
        returns the distribution before the update."""
        labelled = self._actions[action]
        labelled.set_label(vw.CBLabel(label=(cost, probability)))
        examples = [shared, *offered]
        try:
            if self.fast:
                return cast(ActionProbs, self._ws._workspace.predict_then_learn_multi_ex_one(examples))
            return cast(ActionProbs, self._ws.predict_then_learn_one(examples))
        finally:
            labelled.set_label(_NO_LABEL)

    def to_bytes(self) -> bytes:
        """The VW model as bytes (what ``model_bytes`` takes back)."""
        return self._ws.serialize()

    def weights(self) -> npt.NDArray[np.float32]:
        """VW's weight table (with its adaptive and normalisation accumulators), for bit-for-bit comparisons."""
        return self._ws.weights()
