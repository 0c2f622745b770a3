import dagster as dg


class TeacherResource(dg.ConfigurableResource):
    """Who writes the training conversations. ``template``: the offline, seeded default."""

    kind: str = "template"
    seed: int = 0

    def get(self):
        if self.kind != "template":
            raise ValueError(f"unknown teacher kind {self.kind!r} (offline default: 'template')")
        from subterra.teacher import TemplateTeacher

        return TemplateTeacher(seed=self.seed)
