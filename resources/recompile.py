import dagster as dg


class RecompileResource(dg.ConfigurableResource):
    """How the sensor recompiles a changed workflow: ``incremental`` (default) keeps the
    conversations of unchanged paths and continues training from the last good weights; ``full``
    writes every conversation again and trains from scratch. Empty: ``SUBTERRA_RECOMPILE`` or
    ``incremental``."""

    mode: str = ""

    def get(self) -> str:
        import os

        mode = self.mode or os.environ.get("SUBTERRA_RECOMPILE", "") or "incremental"
        if mode not in ("incremental", "full"):
            raise ValueError(f"recompile mode {mode!r}: expected 'incremental' or 'full'")
        return mode

    def run_config(self) -> dict:
        """Run config that sets the mode of the two stages that honour it."""
        mode = self.get()
        return {"ops": {op: {"config": {"recompile": mode}} for op in ("synthetic_corpus", "trained_weights")}}
