"""The ita_ner component: training, both views, serialisation and batching."""
import json
import subprocess
import sys
import warnings

import pytest
import spacy
import torch
from spacy.tokens import Doc
from spacy.training import Example
from thinc.api import SGD, fix_random_seed

from helpers import POSTS, entities, make_examples, make_nlp, train
from spacy_ita import VisualContext
from spacy_ita.ner.inputs import TaggerInput, encode
from spacy_ita.ner.model import sequence_limit


def fresh_docs(examples):
    return [eg.predicted.copy() for eg in examples]


def n_sequences(batch):
    return sum(ids.shape[0] for ids in batch.input_ids)


@pytest.fixture(scope="module")
def trained_tiny(tiny_encoder):
    nlp = make_nlp(tiny_encoder)
    examples = make_examples(nlp)
    return train(nlp, examples, 40, learn_rate=1e-3), examples


def test_overfits_a_dozen_posts_in_both_views():
    """The real default encoder learns a dozen posts perfectly, in both views."""
    nlp = make_nlp()
    examples = make_examples(nlp)
    train(nlp, examples, 30)
    ner = nlp.get_pipe("ita_ner")
    for view in ("cross", "text"):
        ner.view = view
        scores = nlp.evaluate(examples)
        assert scores["ents_f"] == 1.0, (view, scores["ents_per_type"])


def test_labels_and_tags_from_initialize(trained_tiny):
    nlp, _ = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    assert ner.labels == ("LOC", "ORG", "PER")
    assert ner.tags == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_a_failed_initialize_leaves_the_component_as_it_was(tiny_encoder, monkeypatch):
    """A second initialize set the new labels, then failed: the component went
    on tagging with the old weights read against the new tags (wrong labels,
    no error). Now it is as it was, and a second initialize that works starts
    afresh with the new labels."""
    from spacy_ita.ner import model as model_module

    nlp = make_nlp(tiny_encoder)
    examples = make_examples(nlp)
    train(nlp, examples, 10, learn_rate=1e-3)
    ner = nlp.get_pipe("ita_ner")
    expected = entities(nlp.pipe(fresh_docs(examples)))
    more = examples + [Example.from_dict(nlp.make_doc("Visit the Louvre"),
                                         {"entities": [(10, 16, "FAC")]})]

    def offline(*args, **kwargs):
        raise OSError("no encoder here")

    with monkeypatch.context() as patch:
        patch.setattr(model_module, "load_pretrained", offline)
        with pytest.raises(OSError, match="no encoder here"):
            nlp.initialize(lambda: more)
    assert ner.labels == ("LOC", "ORG", "PER")
    assert entities(nlp.pipe(fresh_docs(examples))) == expected
    nlp.from_bytes(nlp.to_bytes())  # the cfg and the weights still belong together
    nlp.initialize(lambda: more)
    assert ner.labels == ("FAC", "LOC", "ORG", "PER") and ner.model.n_scored_tags == 9


def test_labels_added_before_initialize_are_kept(tiny_encoder):
    nlp = make_nlp(tiny_encoder)
    nlp.get_pipe("ita_ner").add_label("FAC")
    nlp.initialize(lambda: make_examples(nlp))
    assert nlp.get_pipe("ita_ner").labels == ("FAC", "LOC", "ORG", "PER")


def test_weights_for_other_labels_do_not_load_and_leave_the_component_as_it_was(
        tiny_encoder, trained_tiny):
    nlp, examples = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    expected = entities(nlp.pipe(fresh_docs(examples)))
    other = make_nlp(tiny_encoder)
    other.initialize(lambda: [eg for eg in make_examples(other)
                              if all(ent.label_ != "ORG" for ent in eg.reference.ents)])
    with pytest.raises(ValueError, match="cannot load its serialised data"):
        ner.from_bytes(other.get_pipe("ita_ner").to_bytes())
    assert ner.labels == ("LOC", "ORG", "PER")
    assert entities(nlp.pipe(fresh_docs(examples))) == expected


def test_inference_uses_one_view_per_doc(trained_tiny):
    nlp, examples = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    docs = fresh_docs(examples)
    inputs = ner.inputs(docs)
    assert [item.context is not None for item in inputs] == [
        caption is not None for _, _, caption in POSTS
    ]
    module = ner.model.module
    batch = encode(module.tokenizer, inputs, 64, 16, "first", "cpu")
    assert n_sequences(batch) == len(docs)  # one encoder pass per doc
    ner.view = "text"
    try:
        assert all(item.context is None for item in ner.inputs(docs))
    finally:
        ner.view = "auto"


def test_pipe_and_call_agree_on_mixed_batches(trained_tiny):
    nlp, examples = trained_tiny
    texts = ["", "Phoenix", "  ", *[text for text, _, _ in POSTS]]
    docs = []
    for i, text in enumerate(texts):
        doc = nlp.make_doc(text)
        if i % 2:
            doc._.visual_context = VisualContext(captions=["a caption"], object_tags=["cat"])
        docs.append(doc)
    one_by_one = [nlp(doc.copy()) for doc in docs]
    batched = list(nlp.pipe([doc.copy() for doc in docs], batch_size=4))
    assert entities(one_by_one) == entities(batched)
    assert [doc.text for doc in batched] == texts
    assert any(doc.ents for doc in batched), "the trained model should find some entities"
    for doc in batched:
        assert all(token.ent_iob_ in ("B", "I", "O") for token in doc)


def test_long_sentence_is_windowed_and_fully_tagged(trained_tiny):
    nlp, _ = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    words = ("Phoenix beat Denver tonight and " * 80).split()
    doc = Doc(nlp.vocab, words=words)
    doc._.visual_context = VisualContext(captions=["basketball " * 200])
    module = ner.model.module
    limit = sequence_limit(module, 512)
    assert limit == 64  # the tiny encoder's position limit
    batch = encode(module.tokenizer, [TaggerInput(doc, "basketball " * 200)], limit, 16, "first", "cpu")
    assert max(ids.shape[1] for ids in batch.input_ids) <= limit
    assert n_sequences(batch) > 1  # windows; the context was dropped first
    assert set(batch.pool_target.tolist()) == set(range(len(doc)))
    tagged = nlp(doc)
    assert all(token.ent_iob_ in ("B", "I", "O") for token in tagged)
    assert tagged.text == doc.text


def test_context_is_cut_before_the_sentence(trained_tiny):
    nlp, _ = trained_tiny
    module = nlp.get_pipe("ita_ner").model.module
    doc = nlp.make_doc("Phoenix beat Denver tonight")
    batch = encode(module.tokenizer, [TaggerInput(doc, "word " * 500)], 64, 16, "first", "cpu")
    assert [ids.shape for ids in batch.input_ids] == [(1, 64)]
    assert set(batch.pool_target.tolist()) == set(range(len(doc)))


def test_mean_pooling_uses_every_subword(trained_tiny):
    nlp, _ = trained_tiny
    module = nlp.get_pipe("ita_ner").model.module
    doc = nlp.make_doc("unbelievably tokenisation")
    first = encode(module.tokenizer, [TaggerInput(doc)], 64, 16, "first", "cpu")
    mean = encode(module.tokenizer, [TaggerInput(doc)], 64, 16, "mean", "cpu")
    assert len(mean.pool_source) > len(first.pool_source) == len(doc)
    totals = [0.0] * len(doc)
    for target, weight in zip(mean.pool_target.tolist(), mean.pool_weight.tolist()):
        totals[target] += weight
    assert totals == pytest.approx([1.0] * len(doc))


def test_serialization_round_trip_in_process(trained_tiny):
    nlp, examples = trained_tiny
    config = dict(nlp.get_pipe_config("ita_ner"))
    restored = spacy.blank("en")
    restored.add_pipe(config.pop("factory"), config=config)
    restored.from_bytes(nlp.to_bytes())
    expected = entities(nlp.pipe(fresh_docs(examples)))
    assert entities(restored.pipe(fresh_docs(examples))) == expected
    assert any(expected)


def test_saved_pipeline_loads_in_a_fresh_offline_process(trained_tiny, tmp_path):
    nlp, examples = trained_tiny
    nlp.to_disk(tmp_path / "pipeline")
    expected = entities(nlp.pipe(fresh_docs(examples)))
    posts = [(text, caption) for text, _, caption in POSTS]
    script = """
import json, sys, spacy
from spacy_ita import VisualContext
nlp = spacy.load(sys.argv[1])
docs = []
for text, caption in json.loads(sys.argv[2]):
    doc = nlp.make_doc(text)
    if caption:
        doc._.visual_context = VisualContext(captions=[caption])
    docs.append(doc)
print(json.dumps([[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in nlp.pipe(docs)]))
"""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "pipeline"), json.dumps(posts)],
        capture_output=True, text=True, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = [[tuple(ent) for ent in doc] for doc in json.loads(result.stdout)]
    assert loaded == expected


def test_text_only_baseline_ignores_context(tiny_encoder):
    nlp = make_nlp(tiny_encoder, use_context=False)
    examples = make_examples(nlp)
    train(nlp, examples, 2)
    ner = nlp.get_pipe("ita_ner")
    assert all(item.context is None for item in ner.inputs(fresh_docs(examples)))


def test_cross_view_only_training_runs(tiny_encoder):
    nlp = make_nlp(
        tiny_encoder,
        loss={"@losses": "spacy-ita.ita_loss.v1", "text_weight": 0.0, "cross_weight": 1.0, "cva_weight": 0.0},
    )
    examples = make_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    losses = nlp.update(examples, sgd=optimizer)
    assert losses["ita_ner"] > 0


def test_image_without_context_warns_once(trained_tiny):
    nlp, _ = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    ner._warned_image_without_context = False
    docs = [nlp.make_doc("Phoenix wins"), nlp.make_doc("Phoenix again")]
    for doc in docs:
        doc._.image = "photo.jpg"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(nlp.pipe(docs))
    assert len([w for w in caught if "ita_context" in str(w.message)]) == 1


@pytest.mark.parametrize(
    "value,error",
    [
        ("a caption", TypeError),
        ({"captions": "not a list"}, TypeError),
        ({"captions": ["ok"], "colour": ["red"]}, ValueError),
        (VisualContext, TypeError),
    ],
)
def test_malformed_visual_context_names_the_doc(trained_tiny, value, error):
    nlp, _ = trained_tiny
    docs = [nlp.make_doc("fine"), nlp.make_doc("Phoenix wins")]
    docs[1]._.visual_context = value
    with pytest.raises(error, match="doc 1"):
        list(nlp.get_pipe("ita_ner").pipe(docs))


def test_visual_context_dict_is_accepted(trained_tiny):
    nlp, _ = trained_tiny
    doc = nlp.make_doc("Phoenix wins")
    doc._.visual_context = {"captions": ["a basketball game"]}
    assert nlp.get_pipe("ita_ner").inputs([doc])[0][1] == "a basketball game"


def test_unseen_label_in_training_is_a_clear_error(trained_tiny):
    nlp, _ = trained_tiny
    doc = nlp.make_doc("Visit the Louvre")
    example = Example.from_dict(doc, {"entities": [(10, 16, "FAC")]})
    with pytest.raises(ValueError, match="FAC"):
        nlp.get_pipe("ita_ner").update([example])


def test_invalid_settings_are_rejected(tiny_encoder):
    with pytest.raises(ValueError, match="view"):
        make_nlp(tiny_encoder, view="both")
    with pytest.raises(ValueError, match="scheme"):
        make_nlp(tiny_encoder, tag_scheme="IOB2")
    with pytest.raises(ValueError, match="context_order"):
        make_nlp(tiny_encoder, context_order=["captions", "exif"])
    with pytest.raises(ValueError, match="head_lr_scale"):
        make_nlp(tiny_encoder, head_lr_scale=0)


def test_head_lr_scale_multiplies_only_the_head_steps(tiny_encoder):
    """One plain SGD step from the same weights: the emission layer and CRF move
    exactly head_lr_scale times as far, the encoder exactly as far."""
    steps = {}
    for scale in (1.0, 10.0):
        nlp = make_nlp(tiny_encoder, head_lr_scale=scale)
        examples = make_examples(nlp)
        fix_random_seed(0)
        nlp.initialize(lambda: examples)
        module = nlp.get_pipe("ita_ner").model.module
        before = {name: p.detach().clone() for name, p in module.named_parameters()}
        nlp.update(examples, sgd=SGD(0.01, L2=0.0, grad_clip=0.0))
        steps[scale] = {name: p.detach() - before[name] for name, p in module.named_parameters()}
    head = nlp.get_pipe("ita_ner").model.head_parameter_names
    assert sorted(head) == ["crf.end", "crf.start", "crf.transitions", "emission.bias", "emission.weight"]
    for name, step in steps[1.0].items():
        factor = 10.0 if name in head else 1.0
        assert torch.allclose(steps[10.0][name], factor * step, rtol=1e-4, atol=1e-7), name
    assert steps[1.0]["emission.weight"].abs().max() > 0


def test_biluo_scheme_trains_and_decodes(tiny_encoder):
    nlp = make_nlp(tiny_encoder, tag_scheme="BILUO")
    examples = make_examples(nlp)
    train(nlp, examples, 3)
    assert "U-PER" in nlp.get_pipe("ita_ner").tags
    for doc in nlp.pipe(fresh_docs(examples)):
        assert all(token.ent_iob_ in ("B", "I", "O") for token in doc)


def test_visual_context_survives_serialisation():
    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    doc = nlp.make_doc("Phoenix wins")
    doc._.visual_context = VisualContext(captions=["a game"], object_tags=["ball"], ocr_text=["SUNS"])
    doc._.image_id = "123"
    assert Doc(nlp.vocab).from_bytes(doc.to_bytes())._.visual_context == doc._.visual_context
    assert doc.copy()._.visual_context == doc._.visual_context
    doc_bin = DocBin(store_user_data=True, docs=[doc])
    (restored,) = DocBin().from_bytes(doc_bin.to_bytes()).get_docs(nlp.vocab)
    assert restored._.visual_context == doc._.visual_context
    assert restored._.image_id == "123"


def test_get_loss_has_no_side_effects(trained_tiny):
    """get_loss returns the gradient and leaves every parameter's .grad alone,
    so calling it twice gives the same answer and never doubles a gradient."""
    nlp, examples = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    module = ner.model.module
    plan = ner.plan_views([eg.predicted for eg in examples])
    views = plan.scored(ner.model.predict(plan.inputs))
    module.zero_grad(set_to_none=True)
    first = ner.get_loss(examples, views)
    second = ner.get_loss(examples, views)
    assert all(parameter.grad is None for parameter in module.parameters())
    assert first[0] == second[0] > 0
    assert set(first[1].d_crf) == {"transitions", "start", "end"}
    for name, grad in first[1].d_crf.items():
        assert (grad == second[1].d_crf[name]).all() and abs(grad).sum() > 0
    for a, b in zip(first[1].d_scores, second[1].d_scores):
        assert (a == b).all()


def test_backprop_carries_the_crf_gradient_into_its_parameters(trained_tiny):
    """The CRF's gradient travels back through thinc with the scores': after
    backprop each CRF parameter's grad is the loss's d_crf, and a second
    backprop adds its own."""
    nlp, examples = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    module = ner.model.module
    plan = ner.plan_views([eg.predicted for eg in examples])
    module.zero_grad(set_to_none=True)
    expected = {name: 0.0 for name, _ in module.crf.named_parameters()}
    for _ in range(2):
        scores, backprop = ner.model.begin_update(plan.inputs)
        _, gradient = ner.get_loss(examples, plan.scored(scores))
        expected = {name: total + torch.tensor(gradient.d_crf[name])
                    for name, total in expected.items()}
        backprop(gradient)
        for name, parameter in module.crf.named_parameters():
            assert torch.allclose(parameter.grad, expected[name], atol=1e-6), name
    assert module.emission.weight.grad.abs().sum() > 0
    module.zero_grad(set_to_none=True)
