"""`python -m spacy_ita serve` as a real uvicorn server on 127.0.0.1: the
API key, concurrent clients each getting their own answers, image URLs, a
key that never reaches the log; and the command's refusals before serving."""
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import spacy
from typer.testing import CliRunner

from serve_helpers import API_KEY, API_KEY_ENV

from spacy_ita.cli import app

AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEXTS = ["Phoenix beat Denver tonight", "Sunset over Phoenix", "Jordan scores again",
         "Flying to Jordan next week", "Apple opens a new store in Paris",
         "Great concert by Adele", "Rain again in London", "Happy birthday Serena"]


def test_the_key_guards_annotate_and_never_reaches_the_log(server):
    url, log = server
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["api_key_required"] is True
    assert httpx.get(url).status_code == 200  # the page asks for the key itself
    assert httpx.post(f"{url}/annotate", json={"text": "Rain"}).status_code == 401
    answer = httpx.post(f"{url}/annotate", json={"text": "Rain in London"}, headers=AUTH)
    assert answer.status_code == 200 and answer.json()["errors"] == []
    assert "POST /annotate" in log.read_text()  # uvicorn's access log is on
    assert API_KEY not in log.read_text()


def test_concurrent_clients_each_get_their_own_answers(server):
    url, _ = server
    bodies = [{"text": text, "text_view": i % 2 == 0,
               **({"context": {"captions": ["basketball players"]}} if i % 3 == 0 else {})}
              for i, text in enumerate(TEXTS)]
    with httpx.Client(headers=AUTH, timeout=60) as client:
        alone = [client.post(f"{url}/annotate", json=body).json() for body in bodies]

        def post(body):
            return client.post(f"{url}/annotate", json=body)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, bodies * 4))
    assert [answer.status_code for answer in answers] == [200] * len(bodies) * 4
    assert [answer.json() for answer in answers] == alone * 4
    assert any(answer["entities"] for answer in alone)


def test_image_urls_are_fetched_when_private_urls_are_allowed(server, image_server):
    url, _ = server
    answer = httpx.post(f"{url}/annotate", headers=AUTH, timeout=60, json={"posts": [
        {"text": "Sunset over Phoenix", "image": f"{image_server}/blue.png"},
        {"text": "Sunset over Phoenix", "image": "http://unknown.invalid/x.png"}]})
    blue, unknown = answer.json()["results"]
    assert blue["context"]["object_tags"] == ["blue"] and blue["errors"] == []
    assert unknown["errors"][0].startswith("posts[1]: image URL 'http://unknown.invalid/x.png'")


def test_the_command_refuses_a_missing_key_a_bad_port_or_a_model_without_ita_ner(
        model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["serve", str(model_dir), "--port", "70000"])
    assert result.exit_code == 1 and "--port must be from 0 to 65535, got 70000" in result.output
    result = runner.invoke(app, ["serve", str(model_dir), "--api-key-env", API_KEY_ENV])
    assert result.exit_code == 1
    assert (f"the environment variable {API_KEY_ENV} is unset or empty"
            in " ".join(result.output.split()))
    spacy.blank("en").to_disk(tmp_path / "blank")
    result = runner.invoke(app, ["serve", str(tmp_path / "blank"), "--no-context"])
    assert result.exit_code == 1
    assert "the pipeline has no ita_ner component (its components: none)" in result.output


def test_the_command_checks_its_setup_before_serving(model_dir, tmp_path, monkeypatch):
    """A language model that cannot be reached, a key that is not ASCII, a
    fetch timeout of 0: refused at the start, not in every post's errors."""
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.append(args))
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    runner = CliRunner()
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        nlp = spacy.load(model_dir)
        nlp.add_pipe("ita_knowledge", after="ita_context", config={"model": {
            "@misc": "spacy-ita.openai_compatible.v1", "model": "m", "json_mode": False,
            "base_url": f"http://127.0.0.1:{closed.getsockname()[1]}/v1",
            "api_key_env": API_KEY_ENV, "timeout": 2.0, "max_retries": 0}})
        nlp.to_disk(tmp_path / "with_lm")
        result = runner.invoke(app, ["serve", str(tmp_path / "with_lm")])
    assert result.exit_code == 1 and "cannot be reached" in result.output
    assert API_KEY not in result.output
    result = runner.invoke(app, ["serve", str(model_dir), "--fetch-timeout", "0"])
    assert result.exit_code == 1
    assert "--fetch-timeout must be a positive number of seconds, got 0" in result.output
    monkeypatch.setenv(API_KEY_ENV, "clé")
    result = runner.invoke(app, ["serve", str(model_dir), "--api-key-env", API_KEY_ENV])
    assert result.exit_code == 1 and "the key must be printable ASCII" in result.output
    assert served == []
    result = runner.invoke(app, ["serve", str(model_dir)])
    assert result.exit_code == 0 and len(served) == 1  # the same command, set up right


def test_the_command_refuses_batch_waits_not_finite_or_over_a_minute(model_dir, monkeypatch):
    """An infinite wait killed the batching worker at the first request: every
    request then hung. The limits given are those the app gets."""
    import uvicorn

    from spacy_ita.serve import app as serve_app

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.append(args))
    monkeypatch.setattr(serve_app, "create_app", lambda nlp, settings: settings)
    runner = CliRunner()
    for option, value in (("--batch-wait-ms", "inf"), ("--batch-gap-ms", "nan"),
                          ("--batch-wait-ms", "60001"), ("--batch-gap-ms", "-1")):
        result = runner.invoke(app, ["serve", str(model_dir), option, value])
        assert result.exit_code == 1, result.output
        assert result.output == (f"Error: {option} must be from 0 to 60,000 milliseconds, "
                                 f"got {value}\n")
    assert served == []
    result = runner.invoke(app, ["serve", str(model_dir), "--batch-wait-ms", "60000",
                                 "--max-download-bytes", "5000"])
    assert result.exit_code == 0, result.output
    (settings,), = served
    assert (settings.batch_wait, settings.max_download_bytes) == (60.0, 5000)
