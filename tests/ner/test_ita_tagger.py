"""The ItaTagger architectures: v2's token features, and v1 pipelines loading unchanged."""
import numpy
import pytest
import torch
import spacy
from spacy.training import Example
from thinc.api import Adam

from helpers import make_examples, train
from spacy_ita import VisualContext
from spacy_ita.knowledge.mentions import Mention
from spacy_ita.ner.inputs import TaggerInput

KNOWLEDGE_POSTS = [
    ("Phoenix beat Denver tonight", [(0, 7, "ORG"), (13, 19, "ORG")],
     "Named entities: 1. Phoenix (basketball team) 2. Denver (team) Reasoning: a game."),
    ("Sunset over Phoenix", [(12, 19, "LOC")], "Phoenix (city)"),
    ("Jordan scores again", [(0, 6, "PER")], "Jordan (person/player)"),
    ("Flying to Jordan next week", [(10, 16, "LOC")], None),
    ("Great concert by Adele", [(17, 22, "PER")], "Adele (person) ; Wembley (venue)"),
    ("Messi joins Miami", [(0, 5, "PER"), (12, 17, "ORG")], "Messi (person) ; Miami (team)"),
]


def knowledge_pipeline(encoder, **model):
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_ner", config={"model": {
        "@architectures": "spacy-ita.ItaTagger.v2", "name": encoder, **model}})
    examples = make_examples(nlp, KNOWLEDGE_POSTS, field="knowledge")
    return train(nlp, examples, steps=3, learn_rate=1e-3), examples


def predictions(nlp, examples):
    return [[(e.start_char, e.end_char, e.label_) for e in doc.ents]
            for doc in nlp.pipe(eg.predicted.copy() for eg in examples)]


def test_v2_learns_type_words_from_the_training_knowledge(tiny_encoder):
    nlp, _ = knowledge_pipeline(tiny_encoder, mention_type_words=64)
    features = nlp.get_pipe("ita_ner").model.module.features
    # "team" and "person" occur 3 times or more; "city", "venue" do not.
    assert features.vocabulary == ["person", "team"]
    assert features.width == 32


def test_v2_features_survive_serialisation(tiny_encoder, tmp_path):
    nlp, examples = knowledge_pipeline(tiny_encoder, shape_width=8, mention_width=4)
    module = nlp.get_pipe("ita_ner").model.module
    assert module.emission.in_features == module.encoder.config.hidden_size + 12
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    loaded_module = loaded.get_pipe("ita_ner").model.module
    assert loaded_module.features.vocabulary == module.features.vocabulary
    for name, value in module.state_dict().items():
        assert (loaded_module.state_dict()[name] == value).all(), name
    assert predictions(loaded, examples) == predictions(nlp, examples)


def test_mentions_change_the_scores_only_where_they_align(tiny_encoder):
    """Same text and context; only the mentions differ, so only the token they
    name gets other scores (the features enter at the emission layer)."""
    nlp, _ = knowledge_pipeline(tiny_encoder, shape_width=0)
    model = nlp.get_pipe("ita_ner").model
    doc = nlp.make_doc("Kawhi joins Toronto")
    context = "Toronto (team)"
    with_mention = TaggerInput(doc, context, (Mention("Toronto", "team"),))
    without = TaggerInput(doc, context, ())
    unmatched = TaggerInput(doc, context, (Mention("Raptors", "team"),))
    scores = model.predict([with_mention, without, unmatched])
    assert (scores[0][:2] == scores[1][:2]).all()
    assert not (scores[0][2] == scores[1][2]).all()
    assert (scores[2] == scores[1]).all()  # a mention not in the post changes nothing


def test_v1_has_no_token_features(tiny_encoder, tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_ner", config={"model": {
        "@architectures": "spacy-ita.ItaTagger.v1", "name": tiny_encoder}})
    doc = nlp.make_doc("Adele sings")
    nlp.initialize(lambda: [Example.from_dict(doc, {"entities": [(0, 5, "PER")]})])
    module = nlp.get_pipe("ita_ner").model.module
    assert module.features is None
    assert module.emission.in_features == module.encoder.config.hidden_size
    nlp.to_disk(tmp_path / "v1")
    assert spacy.load(tmp_path / "v1").get_pipe("ita_ner").model.module.features is None


@pytest.mark.parametrize("setting", ["shape_width", "mention_width", "mention_type_words"])
def test_negative_widths_are_rejected(tiny_encoder, setting):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match=setting):
        nlp.add_pipe("ita_ner", config={"model": {
            "@architectures": "spacy-ita.ItaTagger.v2", "name": tiny_encoder, setting: -1}})


@pytest.mark.parametrize("unmatched, expected", [
    ("keep", [("Toronto (team) ; Lakers (team)", ["Toronto", "Lakers"]),
              ("Lakers (team) a court", ["Lakers"]), ("Lakers (team)", ["Lakers"])]),
    ("drop", [("Toronto (team)", ["Toronto"]), ("a court", []), None]),
])
def test_unmatched_knowledge_is_kept_or_dropped(tiny_encoder, unmatched, expected):
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_ner", config={"unmatched_knowledge": unmatched, "model": {
        "@architectures": "spacy-ita.ItaTagger.v2", "name": tiny_encoder}})
    ner = nlp.get_pipe("ita_ner")
    docs = [nlp.make_doc(text) for text in ("Kawhi joins Toronto", "Kawhi joins", "Kawhi")]
    docs[0]._.visual_context = VisualContext(knowledge=["Toronto (team) ; Lakers (team)"])
    docs[1]._.visual_context = VisualContext(knowledge=["Lakers (team)"], captions=["a court"])
    docs[2]._.visual_context = VisualContext(knowledge=["Lakers (team)"])
    inputs = [ner.cross_input(doc, i) for i, doc in enumerate(docs)]
    found = [None if item is None else (item.context, [m.text for m in item.mentions])
             for item in inputs]
    assert found == expected


def test_mentions_in_the_encoder_start_as_no_change_and_then_learn(tiny_encoder, tmp_path):
    """mention_place "encoder": zero vectors at first (the encoder's input is
    unchanged), learned from the training knowledge, saved and loaded."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_ner", config={"model": {
        "@architectures": "spacy-ita.ItaTagger.v2", "name": tiny_encoder, "shape_width": 0,
        "mention_place": "encoder"}})
    doc = nlp.make_doc("Adele sings")
    doc._.visual_context = VisualContext(knowledge=["Adele (person)"])
    examples = [Example.from_dict(doc, {"entities": [(0, 5, "PER")]})]
    nlp.initialize(lambda: examples)
    model = nlp.get_pipe("ita_ner").model
    module = model.module
    assert module.features.mention_width == module.encoder.config.hidden_size
    assert module.emission.in_features == module.encoder.config.hidden_size
    with_mention = TaggerInput(doc, "Adele (person)", (Mention("Adele", "person"),))
    without = TaggerInput(doc, "Adele (person)", ())
    before = model.predict([with_mention, without])
    assert (before[0] == before[1]).all()
    optimizer = Adam(1e-2)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    after = model.predict([with_mention, without])
    assert not (after[0] == after[1]).all()
    nlp.to_disk(tmp_path / "encoder_mentions")
    loaded = spacy.load(tmp_path / "encoder_mentions").get_pipe("ita_ner").model
    assert (loaded.predict([with_mention, without])[0] == after[0]).all()


def test_a_copy_is_the_same_tagger_with_its_own_weights(tiny_encoder):
    """thinc's copy keeps the facade: the copy decodes as the original does, and
    training the copy leaves the original's weights alone."""
    nlp, examples = knowledge_pipeline(tiny_encoder)
    model = nlp.get_pipe("ita_ner").model
    copied = model.copy()
    assert type(copied) is type(model) and copied.module is not model.module
    inputs = [TaggerInput(eg.predicted) for eg in examples]
    assert copied.decode(copied.predict(inputs)) == model.decode(model.predict(inputs))
    before = model.module.emission.weight.detach().clone()
    copied.module.emission.weight.data.add_(1.0)
    assert (model.module.emission.weight == before).all()


def test_the_optimizer_averages_are_used_and_then_put_back(tiny_encoder):
    """With `use_averages`, evaluating and saving under `nlp.use_params` see the
    averaged torch weights (thinc's torch shim alone never swaps them in); the
    raw weights, and the scores they give, come back afterwards."""
    nlp, examples = knowledge_pipeline(tiny_encoder)
    optimizer = Adam(1e-3, use_averages=True)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    model = nlp.get_pipe("ita_ner").model
    weight = model.module.emission.weight
    raw = weight.detach().clone()
    inputs = [TaggerInput(eg.predicted) for eg in examples]
    raw_scores = model.predict(inputs)
    with nlp.use_params(optimizer.averages):
        average = optimizer.averages[(model._shim.id, "emission.weight")]
        assert numpy.array_equal(weight.detach().numpy(), average)
        assert not torch.equal(weight, raw)
        averaged_scores = model.predict(inputs)
    assert torch.equal(weight, raw)
    assert not all(numpy.allclose(a, b) for a, b in zip(raw_scores, averaged_scores))
    assert all(numpy.array_equal(a, b) for a, b in zip(model.predict(inputs), raw_scores))
