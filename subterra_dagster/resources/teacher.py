import dagster as dg


class TeacherResource(dg.ConfigurableResource):
    """The offline teacher. ``template``: the seeded default (also the one that gives Claude, when
    the ``claude`` resource makes Claude the teacher, its example wording of every turn)."""

    kind: str = "template"
    seed: int = 0

    def get(self):
        if self.kind != "template":
            raise ValueError(f"unknown teacher kind {self.kind!r} (offline: 'template'; Claude: the claude resource)")
        from subterra.teacher import TemplateTeacher

        return TemplateTeacher(seed=self.seed)
