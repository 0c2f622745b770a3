import dagster as dg

from subterra.claude_client import ClaudeSettings


class ClaudeResource(dg.ConfigurableResource):
    """Claude for the parts named in ``parts`` (teacher, user, judge, frontier, or all), through the
    anthropic SDK. Offline by default: a part uses Claude only when it is named here (or in
    ``SUBTERRA_CLAUDE``) and ``ANTHROPIC_API_KEY`` is set. The key is read from the environment
    only; it is never configuration."""

    parts: str = ""  # comma-separated part names or "all"; empty: $SUBTERRA_CLAUDE; neither: offline
    teacher_model: str = ClaudeSettings.teacher_model
    user_model: str = ClaudeSettings.user_model
    judge_model: str = ClaudeSettings.judge_model
    second_judge_model: str = ClaudeSettings.second_judge_model
    frontier_model: str = ClaudeSettings.frontier_model
    teacher_mode: str = ClaudeSettings.teacher_mode  # batch | interactive
    concurrency: int = ClaudeSettings.concurrency
    max_retries: int = ClaudeSettings.max_retries
    timeout_seconds: float = ClaudeSettings.timeout_s
    poll_seconds: float = ClaudeSettings.poll_s
    base_url: str = ""

    def get(self):
        import os

        from subterra.claude_client import ENV_PARTS, Claude

        fields = self.model_dump()
        parts = fields.pop("parts") or os.environ.get(ENV_PARTS, "")
        fields["timeout_s"] = fields.pop("timeout_seconds")
        fields["poll_s"] = fields.pop("poll_seconds")
        return Claude.from_env(ClaudeSettings(parts=ClaudeSettings.parse_parts(parts), **fields))
