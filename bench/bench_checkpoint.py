"""What a crash-safe, resumable checkpoint costs next to `spacy train`'s.

    python bench/bench_checkpoint.py [--encoder PATH] [--repeat 3] [--json out.json]

Trains the repo's CPU config (bundled all-MiniLM-L6-v2 unless --encoder) for
two steps on four posts, so every weight has Adam moments, then times:
  spacy    what spacy train does at a best checkpoint: nlp.to_disk(model-last)
           in place, then rmtree + copytree to model-best
  spacy_ita  Checkpoints.save: the training state (optimizer moments, random
           generators, position), then model-last and model-best swapped in whole
and reports the seconds of each and the size of model-last and of the state.
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", help="encoder path (default: the bundled MiniLM)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from spacy import util
    from spacy.training.initialize import init_nlp
    from spacy.training.loop import create_before_to_disk_callback

    from helpers import training_setup
    from spacy_ita.corpus.readers import MultimodalCorpus
    from spacy_ita.ner.encoders import bundled_encoder
    from spacy_ita.training.checkpoints import Checkpoints, Progress, random_states

    encoder = args.encoder or str(bundled_encoder())
    work = Path(tempfile.mkdtemp(prefix="bench_checkpoint_"))
    setup = training_setup(work / "data", encoder)
    overrides = {"paths.train": str(setup["corpus"]), "paths.dev": str(setup["corpus"]),
                 "training.max_epochs": 0}
    config = util.load_config(setup["config"], overrides=overrides, interpolate=False)
    nlp = init_nlp(config)
    resolved = util.registry.resolve(nlp.config.interpolate()["training"])
    optimizer = resolved["optimizer"]
    # two updates, so the optimizer holds moments for every weight
    examples = list(MultimodalCorpus(setup["corpus"])(nlp))
    for _ in range(2):
        nlp.update(examples, sgd=optimizer)
    assert optimizer.mom1, "no optimizer state to save"

    results = {"encoder": encoder, "spacy_s": [], "spacy_ita_s": []}
    spacy_out = work / "spacy"
    spacy_out.mkdir()
    ours = Checkpoints(work / "ours", {"config": "", "data": "", "versions": {}},
                       warn=lambda text: print(text))
    before_to_disk = create_before_to_disk_callback(None)
    for attempt in range(args.repeat):
        start = time.perf_counter()
        nlp.to_disk(spacy_out / "model-last")
        if (spacy_out / "model-best").exists():
            shutil.rmtree(spacy_out / "model-best")
        shutil.copytree(spacy_out / "model-last", spacy_out / "model-best")
        results["spacy_s"].append(time.perf_counter() - start)
        start = time.perf_counter()
        ours.save(nlp, optimizer, Progress(run="bench", step=attempt), random_states(),
                  True, before_to_disk)
        results["spacy_ita_s"].append(time.perf_counter() - start)
    results["model_last_mb"] = folder_mb(ours.last)
    results["training_state_mb"] = folder_mb(ours.states)
    for key in ("spacy_s", "spacy_ita_s"):
        results[key] = [round(seconds, 3) for seconds in results[key]]
    print(json.dumps(results, indent=2))
    print(f"best of {args.repeat}: spacy {min(results['spacy_s']):.2f} s, "
          f"spacy_ita {min(results['spacy_ita_s']):.2f} s; model-last "
          f"{results['model_last_mb']:.1f} MB, training state "
          f"{results['training_state_mb']:.1f} MB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf8")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
