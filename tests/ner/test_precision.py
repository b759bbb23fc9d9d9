"""ita_ner's `precision`: bf16 autocast of the encoder alone, fp32 everywhere else."""
import logging

import pytest
import srsly
import spacy
import torch

from helpers import entities, make_examples, make_nlp, train
from spacy_ita.ner import precision as precision_module
from spacy_ita.ner.crf import LinearChainCRF
from spacy_ita.ner.precision import effective_precision, native_bf16


@pytest.fixture(scope="module")
def trained_tiny(tiny_encoder):
    """A tiny pipeline trained in fp32 until it tags its posts with clear margins."""
    nlp = make_nlp(tiny_encoder, precision="fp32")
    examples = make_examples(nlp)
    return train(nlp, examples, 30, learn_rate=1e-3), examples


@pytest.fixture
def bf16_native(monkeypatch):
    """Pretend the CPU has (or lacks) native bf16: call with True or False."""
    def pretend(native: bool) -> None:
        monkeypatch.setattr(precision_module, "native_bf16", lambda device: native)
    return pretend


def fresh_docs(examples):
    return [eg.predicted.copy() for eg in examples]


def record_dtypes(module):
    """Hooks recording the dtype of the encoder's linear layers' outputs (its
    own output is fp32 either way: autocast runs layer norms in fp32) and of
    the emissions."""
    seen = {"encoder": [], "emission": []}
    hooks = [
        layer.register_forward_hook(lambda _, __, out: seen["encoder"].append(out.dtype))
        for layer in module.encoder.modules() if isinstance(layer, torch.nn.Linear)
    ] + [
        module.emission.register_forward_hook(
            lambda _, __, out: seen["emission"].append(out.dtype)),
    ]
    return seen, hooks


def test_precision_is_validated_in_config_and_at_runtime(tiny_encoder):
    with pytest.raises(ValueError, match="precision 'fp16'.*'auto', 'bf16', 'fp32'"):
        make_nlp(tiny_encoder, precision="fp16")
    ner = make_nlp(tiny_encoder).get_pipe("ita_ner")
    assert ner.precision == "auto"
    with pytest.raises(ValueError, match="ita_ner precision 'half'"):
        ner.precision = "half"
    assert ner.precision == "auto"


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_uses_bf16_only_where_it_is_native(trained_tiny, bf16_native, native, expected):
    nlp, examples = trained_tiny
    bf16_native(native)
    ner = nlp.get_pipe("ita_ner")
    ner.precision = "auto"
    seen, hooks = record_dtypes(ner.model.module)
    try:
        assert ner.precision_in_effect == expected
        list(nlp.pipe(fresh_docs(examples)))
    finally:
        ner.precision = "fp32"
        for hook in hooks:
            hook.remove()
    encoder_dtype = torch.bfloat16 if expected == "bf16" else torch.float32
    assert set(seen["encoder"]) == {encoder_dtype}
    assert set(seen["emission"]) == {torch.float32}


def test_forced_bf16_where_it_is_emulated_warns_once(caplog, bf16_native):
    bf16_native(False)
    device = torch.device("meta")  # a device type no other test announces
    with caplog.at_level(logging.INFO, logger="spacy_ita.ner.precision"):
        assert effective_precision("bf16", device) == "bf16"
        assert effective_precision("bf16", device) == "bf16"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not native on meta" in warnings[0].getMessage()


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision_module, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert native_bf16(torch.device("cpu"))
    monkeypatch.setattr(precision_module, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not native_bf16(torch.device("cpu"))


def test_bf16_update_keeps_crf_losses_and_weights_fp32(tiny_encoder, monkeypatch):
    """A CVA update in bf16: only the encoder computes in bf16; the CRF sees
    fp32 emissions, and every weight and gradient stays fp32."""
    nlp = make_nlp(tiny_encoder, precision="bf16")
    examples = make_examples(nlp)
    train(nlp, examples, 0)
    crf_inputs = []
    original = LinearChainCRF._forward_alphas

    def recording(self, emissions, mask):
        crf_inputs.append(emissions.dtype)
        return original(self, emissions, mask)

    monkeypatch.setattr(LinearChainCRF, "_forward_alphas", recording)
    module = nlp.get_pipe("ita_ner").model.module
    seen, hooks = record_dtypes(module)
    losses = nlp.update(examples, sgd=False)  # gradients kept, no step to zero them
    for hook in hooks:
        hook.remove()
    assert set(seen["encoder"]) == {torch.bfloat16}
    assert set(seen["emission"]) == set(crf_inputs) == {torch.float32}
    assert losses["ita_ner"] > 0
    parameters = list(module.named_parameters())
    assert {p.dtype for _, p in parameters} == {torch.float32}
    grads = {name: p.grad for name, p in parameters if p.grad is not None}
    assert any(name.startswith("encoder.") and grad.abs().sum() > 0
               for name, grad in grads.items())
    assert {grad.dtype for grad in grads.values()} == {torch.float32}


def test_fp32_and_bf16_find_the_same_entities(trained_tiny):
    nlp, examples = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    found = {}
    for precision in ("fp32", "bf16", "fp32"):
        ner.precision = precision
        found[precision] = entities(nlp.pipe(fresh_docs(examples)))
    assert any(found["fp32"]), "the trained pipeline finds no entity: nothing is compared"
    assert found["bf16"] == found["fp32"]


def emissions_two_ways(ner, docs):
    """The module's emissions for `docs` in bf16 by inference (kept bf16
    copies of the linear weights) and with autograd on (autocast's own casts)."""
    from spacy_ita.ner.model import encode, sequence_limit
    from spacy_ita.ner.token_features import featurize

    model, inputs = ner.model, ner.inputs(docs)
    module = model.module
    batch = encode(module.tokenizer, inputs, sequence_limit(module, model.attrs["max_length"]),
                   model.attrs["window_overlap"], model.attrs["pooling"],
                   module.emission.weight.device)
    if module.features is not None:
        batch.features = featurize([(item.doc, item.mentions) for item in inputs],
                                   module.features.vocabulary, module.emission.weight.device)
    module.eval()
    with precision_module.encoder_precision("bf16"):
        with torch.no_grad():
            inferred = module(batch)
        autocast = module(batch).detach()
    return inferred, autocast


def test_bf16_inference_with_kept_weights_is_autocast_exactly(trained_tiny):
    """Inference keeps bf16 copies of the encoder's linear weights instead of
    casting them on every batch: the same emissions to the bit, made again once
    a weight changes."""
    nlp, examples = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    docs = fresh_docs(examples)
    inferred, autocast = emissions_two_ways(ner, docs)
    assert torch.equal(inferred, autocast)
    parameters = list(ner.model.module.parameters())  # the fp32 weights are back in place
    assert {type(p) for p in parameters} == {torch.nn.Parameter}
    assert {p.dtype for p in parameters} == {torch.float32}
    linear = ner.model.module.encoder.encoder.layer[0].intermediate.dense
    original = linear.weight.detach().clone()
    try:
        with torch.no_grad():
            linear.weight.mul_(1.5)  # in place, as an optimizer step changes it
        changed, autocast = emissions_two_ways(ner, docs)
        assert torch.equal(changed, autocast)
        assert not torch.equal(changed, inferred)
    finally:
        with torch.no_grad():
            linear.weight.copy_(original)


@pytest.mark.skipif(not precision_module.onednn_packing(),
                    reason="this torch or CPU has no bf16 oneDNN linear with packed weights")
def test_kept_weights_are_prepacked_for_onednn_with_the_same_emissions(trained_tiny,
                                                                        monkeypatch):
    """Where oneDNN takes them, the kept weights are prepacked for its matmul;
    the emissions are autocast's to the bit, packed or not."""
    nlp, examples = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    kept = ner.model.module._bf16_weights
    made = []
    for packing in (True, False):
        monkeypatch.setattr(precision_module, "onednn_packing", lambda: packing)
        kept.forget()
        ner.precision = "bf16"
        list(nlp.pipe(fresh_docs(examples)))
        ner.precision = "auto"
        made.append({copy.packed for copy in kept._copies.values()})
        inferred, autocast = emissions_two_ways(ner, fresh_docs(examples))
        assert torch.equal(inferred, autocast)
    assert made == [{True}, {False}]


def test_the_packing_probe_draws_nothing_from_torch_s_generator():
    """It runs at a training run's first bf16 evaluation: a draw from torch's
    generator there made a resumed run's dropout masks differ from the
    uninterrupted run's."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    precision_module.onednn_packing.cache_clear()
    precision_module.onednn_packing()
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.skipif(not precision_module.onednn_packing(),
                    reason="this torch or CPU has no bf16 oneDNN linear with packed weights")
@pytest.mark.parametrize("case", ["strided rows", "oneDNN switched off"])
def test_packed_copies_leave_to_autocast_the_inputs_they_would_round_otherwise(case):
    """A strided input of 3 dimensions with a bias is rounded once by the
    packed op where autocast rounds twice; with oneDNN off, autocast uses
    another kernel. Both go through autocast instead."""
    import warnings
    from contextlib import nullcontext

    module = torch.nn.Sequential(torch.nn.Linear(384, 1536))  # MiniLM's feed-forward
    kept = precision_module.Bf16LinearWeights(module)
    seed = torch.Generator().manual_seed(0)
    rows = torch.randn(32, 384, 64, generator=seed).transpose(1, 2)
    if case == "oneDNN switched off":
        rows = rows.contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on TF32 when the flags change
        onednn = (torch.backends.mkldnn.flags(enabled=False) if case == "oneDNN switched off"
                  else nullcontext())
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), onednn:
            expected = module(rows)
            with kept.used():
                found = module(rows)
    assert torch.equal(found, expected)


def test_kept_bf16_weights_follow_training_updates(tiny_encoder):
    """thinc's optimizer changes the weights in place through numpy, which
    torch does not count as a change: tagging after an update must still use
    the updated weights."""
    nlp = make_nlp(tiny_encoder, precision="bf16")
    examples = make_examples(nlp)
    train(nlp, examples, 0)
    ner = nlp.get_pipe("ita_ner")
    docs = fresh_docs(examples)
    before, _ = emissions_two_ways(ner, docs)
    optimizer = nlp.resume_training()
    for _ in range(3):
        list(nlp.pipe(fresh_docs(examples)))  # the copies are made between updates
        nlp.update(examples, sgd=optimizer)
    after, autocast = emissions_two_ways(ner, docs)
    assert not torch.equal(after, before)
    assert torch.equal(after, autocast)


def test_tagging_between_a_gradient_and_the_step_sees_the_step(tiny_encoder):
    """A component that annotates during training tags after its gradient but
    before the optimizer step; the kept copies must not outlive that step."""
    nlp = make_nlp(tiny_encoder, precision="bf16")
    examples = make_examples(nlp)
    train(nlp, examples, 0)
    ner = nlp.get_pipe("ita_ner")
    optimizer = nlp.resume_training()
    nlp.update(examples, sgd=False)  # gradients, no step
    list(nlp.pipe(fresh_docs(examples)))  # the copies are made from the weights before it
    ner.finish_update(optimizer)
    after, autocast = emissions_two_ways(ner, fresh_docs(examples))
    assert torch.equal(after, autocast)


def test_kept_bf16_weights_serve_only_the_thread_that_uses_them(trained_tiny):
    """While one thread's bf16 forward uses the kept copies, another sees the
    fp32 weights: it tags in fp32, saves and trains them as they are."""
    import threading

    nlp, examples = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    module = ner.model.module
    ner.precision = "fp32"
    expected = entities(nlp.pipe(fresh_docs(examples)))
    held, done, in_use = threading.Event(), threading.Event(), []

    def bf16_forward_in_progress():
        with module._bf16_weights.used():
            in_use.append(precision_module._kept_copies.get() is not None)
            held.set()
            done.wait(10)

    thread = threading.Thread(target=bf16_forward_in_progress)
    thread.start()
    try:
        assert held.wait(5)
        found = entities(nlp.pipe(fresh_docs(examples)))
        saved = {tensor.dtype for tensor in module.state_dict().values()
                 if tensor.is_floating_point()}
        losses = {}
        nlp.update(examples, sgd=False, losses=losses)
        encoder_grads = [p.grad for name, p in module.named_parameters()
                         if name.startswith("encoder.") and name.endswith(".weight")
                         and p.grad is not None]
    finally:
        done.set()
        thread.join(5)
        module.zero_grad()
        ner.precision = "auto"
    assert in_use == [True]
    assert found == expected and saved == {torch.float32}
    assert encoder_grads and all(grad.abs().sum() > 0 for grad in encoder_grads)


def test_kept_bf16_weights_take_no_memory_where_they_cannot_serve(trained_tiny):
    """Dropped once tagging goes fp32 or a training forward runs (their
    weights are about to change)."""
    nlp, examples = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    kept = ner.model.module._bf16_weights
    try:
        for precision, then in (("fp32", lambda: list(nlp.pipe(fresh_docs(examples)))),
                                ("bf16", lambda: nlp.update(examples, sgd=False))):
            ner.precision = "bf16"
            list(nlp.pipe(fresh_docs(examples)))
            assert kept._copies is not None
            ner.precision = precision
            then()
            assert kept._copies is None
    finally:
        ner.model.module.zero_grad()
        ner.precision = "auto"


def test_a_pipeline_loaded_in_inference_mode_tags_in_bf16(trained_tiny, tmp_path):
    """Its weights are inference tensors, which have no version to tell a
    change by: autocast casts them on each forward instead of kept copies."""
    nlp, examples = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    ner.precision = "bf16"
    expected = entities(nlp.pipe(fresh_docs(examples)))
    ner.precision = "auto"
    nlp.to_disk(tmp_path / "pipeline")
    with torch.inference_mode():
        loaded = spacy.load(tmp_path / "pipeline")
        loaded.get_pipe("ita_ner").precision = "bf16"
        docs = []
        for eg in examples:
            docs.append(loaded.make_doc(eg.text))
            docs[-1]._.visual_context = eg.predicted._.visual_context
        found = entities(loaded.pipe(docs))
    assert any(expected) and found == expected


def test_a_copied_tagger_makes_its_own_bf16_weights(trained_tiny):
    import copy

    nlp, examples = trained_tiny
    ner = nlp.get_pipe("ita_ner")
    emissions_two_ways(ner, fresh_docs(examples))  # the original keeps copies
    module = copy.deepcopy(ner.model.module)
    assert module._bf16_weights._copies is None
    assert all(a is b for a, b in zip(module._bf16_weights.layers,
                                      [m for m in module.encoder.modules()
                                       if isinstance(m, torch.nn.Linear)]))


def test_prediction_leaves_eval_mode_to_the_next_update(tiny_encoder):
    """Tagging holds the module in eval mode (no dropout) between batches
    instead of switching every submodule back and forth; an update trains
    with dropout again."""
    nlp = make_nlp(tiny_encoder, precision="fp32")
    examples = make_examples(nlp)
    train(nlp, examples, 0)
    module = nlp.get_pipe("ita_ner").model.module
    first = entities(nlp.pipe(fresh_docs(examples)))
    assert not module.training
    assert entities(nlp.pipe(fresh_docs(examples))) == first
    nlp.update(examples)
    assert module.training


def test_saved_pipeline_loads_and_runs_in_both_precisions(trained_tiny, tmp_path):
    """Weights are saved in fp32 whatever the precision, and a pipeline saved
    before `precision` existed (no such setting in its config) loads as auto."""
    nlp, examples = trained_tiny
    nlp.to_disk(tmp_path / "pipeline")
    expected = entities(nlp.pipe(fresh_docs(examples)))
    config = tmp_path / "pipeline" / "config.cfg"
    assert 'precision = "fp32"' in config.read_text()
    for precision in ("fp32", "bf16"):
        loaded = spacy.load(tmp_path / "pipeline",
                            config={"components": {"ita_ner": {"precision": precision}}})
        module = loaded.get_pipe("ita_ner").model.module
        assert {p.dtype for p in module.parameters()} == {torch.float32}
        assert entities(loaded.pipe(fresh_docs(examples))) == expected, precision
    config.write_text(config.read_text().replace('precision = "fp32"\n', ""))
    assert spacy.load(tmp_path / "pipeline").get_pipe("ita_ner").precision == "auto"


def test_apply_and_evaluate_take_a_precision(trained_tiny, tmp_path):
    """`apply`'s and `evaluate`'s `--precision` override the pipeline's own
    setting; a wrong value is an error that names the allowed ones."""
    from spacy.tokens import DocBin
    from typer.testing import CliRunner

    from spacy_ita.bulk.annotate import PipelineSettings, PipelineSpec
    from spacy_ita.cli import app

    nlp, examples = trained_tiny
    nlp.to_disk(tmp_path / "pipeline")
    for precision in ("bf16", "fp32"):
        spec = PipelineSpec(str(tmp_path / "pipeline"),
                            PipelineSettings(add_context=False, precision=precision))
        assert spec.load().get_pipe("ita_ner").precision == precision
    DocBin(docs=[eg.reference for eg in examples], store_user_data=True).to_disk(
        tmp_path / "gold.spacy")
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pipeline"), str(tmp_path / "gold.spacy"),
                                 "--precision", "bf16", "--output", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert srsly.read_json(tmp_path / "m.json")["precision"] == "bf16"
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pipeline"), str(tmp_path / "gold.spacy"),
                                 "--precision", "half"])
    assert result.exit_code == 1
    assert "Unknown ita_ner precision 'half'; expected one of" in " ".join(result.output.split())
