from typing import Optional

import dagster as dg


class RecompileResource(dg.ConfigurableResource):
    """How the sensor recompiles a changed workflow: ``incremental`` (default) keeps the
    conversations of unchanged paths and continues training from the last good weights; ``full``
    writes every conversation again and trains from scratch. Empty: ``SUBTERRA_RECOMPILE`` or
    ``incremental``. An incremental recompile that does not hold is done again in full
    (``fall_back_to_full``)."""

    mode: str = ""
    # an incremental recompile that does not hold (eval_scores' ``incremental_max_drop``) is
    # followed by a full recompile of the same definition (the ``incremental_fallback`` sensor)
    # (None: ``SUBTERRA_RECOMPILE_FALLBACK``, on unless it is 0)
    fall_back_to_full: Optional[bool] = None

    def get(self) -> str:
        import os

        mode = self.mode or os.environ.get("SUBTERRA_RECOMPILE", "") or "incremental"
        if mode not in ("incremental", "full"):
            raise ValueError(f"recompile mode {mode!r}: expected 'incremental' or 'full'")
        return mode

    def falls_back(self) -> bool:
        import os

        if self.fall_back_to_full is not None:
            return self.fall_back_to_full
        return os.environ.get("SUBTERRA_RECOMPILE_FALLBACK", "1") != "0"

    def run_config(self, mode: str = "") -> dict:
        """Run config that sets the mode (this resource's, or ``mode``) of the two stages that honour it."""
        mode = mode or self.get()
        return {"ops": {op: {"config": {"recompile": mode}} for op in ("synthetic_corpus", "trained_weights")}}
