"""The say lines a runtime drafts from (``subterra.drafts``): the workflow's lines and the model's own,
looked up token by token."""

from subterra.runtime.encoding import Codec


def test_say_drafts_continue_the_nodes_known_say_lines(trained, mini_workflow):
    """The workflow's say lines, tokenized as a form holds them, are drafts from their first token
    on; a line the model writes is added; a say that never closed is not."""
    from subterra.drafts import SayDrafts
    from subterra.forms import SAY_HEAD
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow)
    node = next(n for n in mini_workflow.nodes.values() if n.say)
    line = codec.encode(SAY_HEAD + node.say[0] + '"}')[len(codec.say_head):]
    closing = next(j for j, t in enumerate(line) if t in codec.say_ends)
    line = line[: closing + 1]
    drafts = codec.drafts
    place = drafts.step(drafts.start(node.id), line[0])
    assert drafts.after(place, line[1], 100) == line[2:]
    assert drafts.after(place, line[1], 3) == line[2:5]
    assert drafts.after(drafts.step(place, line[1]), line[2], 100) == line[3:]
    other = next(n for n in mini_workflow.nodes if n != node.id and not set(mini_workflow.nodes[n].say) & set(node.say))
    assert drafts.after(drafts.step(drafts.start(other), line[0]), line[1], 100) != line[2:]
    written = line[:2] + [codec.encode(" zebra")[0]] + line[2:]
    fresh = SayDrafts(codec.say_ends)
    fresh.add(node.id, written[:-1])  # cut off before it closed: nothing to draft from
    assert fresh.after(fresh.step(fresh.start(node.id), written[0]), written[1], 100) == []
    fresh.add(node.id, written + [7, 7])  # kept up to the token closing it
    assert fresh.after(fresh.step(fresh.start(node.id), written[0]), written[1], 100) == written[2:]
    assert SayDrafts.of_workflow(codec).after(place, line[1], 100) == line[2:]


def test_a_say_that_opens_with_its_own_sentence_is_drafted_from_a_known_line_after_it(trained, mini_workflow):
    """"Sure. Hello, where are you headed?": after the model's own first sentence, the declared
    line is known again, so the rest of the say can be drafted (``SayDrafts.after_sentence``)."""
    import json as json_module

    from subterra.drafts import SENTENCE
    from subterra.forms import SAY_HEAD
    from subterra.student import load_compiled

    tokenizer, _ = load_compiled(trained[1].model_dir)
    codec = Codec(tokenizer, mini_workflow)
    line = "Hello, where are you headed?"
    before = codec.encode(SAY_HEAD + SENTENCE)
    after = codec.encode(SAY_HEAD + SENTENCE + " " + json_module.dumps(line)[1:-1] + '"}')[len(before):]
    place = codec.drafts.after_sentence("greet")
    assert "Hello".startswith(codec.decode(after[:2]).strip())  # the space, then what tells the line from the others
    for i, token in enumerate(after):
        assert token in place.children  # every token of it is known there
        if i == 1:  # from its first word on, the rest of the line is drafted whole
            assert codec.drafts.after(place, token, 100) == after[2:]
        place = codec.drafts.step(place, token)
    assert after[-1] in codec.say_ends
    assert codec.drafts.after_sentence("no_such_node") is None
