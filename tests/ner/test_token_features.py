"""Token features: shapes, mention ids and their embedding."""
import pytest
import spacy
import torch

from spacy_ita.knowledge.mentions import Mention
from spacy_ita.ner.token_features import (
    N_SHAPES,
    PAD,
    UNKNOWN,
    TokenFeatureEmbedding,
    build_type_vocabulary,
    featurize,
    shape_id,
    type_words,
)


def test_shapes_tell_case_kind_and_length_apart():
    words = ["Apple", "APPLE", "apple", "#Apple", "@apple", "http://t.co/x", "2015",
             ":", "A", "iPhone", "😀"]
    ids = [shape_id(word) for word in words]
    assert len(set(ids)) == len(words)
    assert all(0 <= i < N_SHAPES for i in ids)
    assert shape_id("Paris") == shape_id("Tokyo") != shape_id("Jo")


def test_type_vocabulary_keeps_frequent_words():
    mentions = [Mention("a", "person/handle")] * 3 + [Mention("b", "Sports Team")] * 4 + [
        Mention("c", "rare")]
    assert type_words("Person/Handle 2") == ["person", "handle"]
    assert build_type_vocabulary(mentions, 10) == ["sports", "team", "handle", "person"]
    assert build_type_vocabulary(mentions, 1) == ["sports"]


def test_featurize_marks_mentions_and_their_type_words():
    nlp = spacy.blank("en")
    doc = nlp.make_doc("Kawhi Leonard joins the Raptors")
    mentions = (Mention("Kawhi Leonard", "person/player"), Mention("Raptors", "nba team"))
    features = featurize([(doc, mentions), (nlp.make_doc("no knowledge"), ())],
                         ["person", "team"], "cpu")
    assert features.mention_position.tolist() == [1, 2, 0, 0, 1, 0, 0]
    person, team = 2, 3
    assert features.mention_type.tolist() == [
        [person, UNKNOWN, PAD], [person, UNKNOWN, PAD], [PAD] * 3, [PAD] * 3,
        [UNKNOWN, team, PAD], [PAD] * 3, [PAD] * 3,
    ]
    assert features.shape.tolist()[:2] == [shape_id("Kawhi"), shape_id("Leonard")]


def test_embedding_widths_and_switches():
    nlp = spacy.blank("en")
    features = featurize([(nlp.make_doc("Kawhi plays"), (Mention("Kawhi", "person"),))],
                         ["person"], "cpu")
    both = TokenFeatureEmbedding(8, 4, ["person"])
    assert both(features).shape == (2, 12) and both.width == 12
    assert TokenFeatureEmbedding(8, 0, [])(features).shape == (2, 8)
    mention_only = TokenFeatureEmbedding(0, 4, ["person"])
    vectors = mention_only(features)
    assert not torch.equal(vectors[0], vectors[1])  # the mention token differs


def test_encoder_side_features_start_at_zero_and_leave_the_emission_width():
    nlp = spacy.blank("en")
    features = featurize([(nlp.make_doc("Kawhi plays"), (Mention("Kawhi", "person"),))],
                         ["person"], "cpu")
    both_in = TokenFeatureEmbedding(8, 8, ["person"], shape_place="encoder", mention_place="encoder")
    assert both_in.width == 0 and both_in.in_encoder
    assert torch.equal(both_in.encoder_vectors(features), torch.zeros(2, 8))
    mixed = TokenFeatureEmbedding(8, 4, ["person"], shape_place="encoder")
    assert mixed.width == 4 and mixed(features).shape == (2, 4)
    assert mixed.encoder_vectors(features).shape == (2, 8)
    with pytest.raises(ValueError, match="place"):
        TokenFeatureEmbedding(8, 4, [], shape_place="middle")
