// The try-a-model page of `spacy_ita serve`: sends the post (and the photo as a
// data: URL) to /annotate and draws the visual context and the entities of the
// cross and text views. Everything the server sends is put in as text, never HTML.
"use strict";

// displaCy's entity colours; other labels get its grey.
const COLOURS = { ORG: "#7aecec", PER: "#aa9cfc", PERSON: "#aa9cfc", LOC: "#ff9561",
                  GPE: "#feca74", MISC: "#e4e7d2", OTHER: "#e4e7d2" };
const CONTEXT_NAMES = { captions: "Captions", object_tags: "Object tags", ocr_text: "Text in the image",
                        knowledge: "Knowledge" };
const byId = (id) => document.getElementById(id);
let imageDataUrl = null;

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function say(text, isError) {
  byId("message").textContent = text;
  byId("message").className = isError ? "error" : "";
}

async function loadStatus() {
  try {
    const response = await fetch("health");
    const status = await response.json();
    byId("model").textContent = `Model ${status.model} (${status.labels.join(", ")}; ` +
      `${status.precision}${status.reads_images ? "" : "; images are not read"})`;
    byId("key-row").hidden = !status.api_key_required;
    document.body.dataset.state = "ready";
  } catch (err) {
    byId("model").textContent = `The server does not answer: ${err}`;
    document.body.dataset.state = "error";
  }
}

function useImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    say(`${file.name} is not an image`, true);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    imageDataUrl = reader.result;
    byId("preview").src = imageDataUrl;
    byId("preview").hidden = false;
    byId("image-name").textContent = file.name;
    byId("clear-image").hidden = false;
  };
  reader.onerror = () => say(`${file.name} could not be read`, true);
  reader.readAsDataURL(file);
}

function clearImage() {
  imageDataUrl = null;
  byId("image-file").value = "";
  byId("preview").hidden = true;
  byId("image-name").textContent = "";
  byId("clear-image").hidden = true;
}

function drawEntities(view, text, entities, note) {
  const box = byId(view).querySelector(".entities");
  box.replaceChildren();
  // The server counts characters as Python does (code points), JavaScript's
  // strings count UTF-16 units: an emoji is one of the first and two of the second.
  const chars = Array.from(text);
  const part = (start, end) => chars.slice(start, end).join("");
  let offset = 0;
  for (const entity of entities) {
    box.append(part(offset, entity.start));
    const mark = element("mark", part(entity.start, entity.end), "entity");
    mark.dataset.label = entity.label;
    mark.style.background = COLOURS[entity.label] || "#ddd";
    mark.append(element("span", entity.label));
    box.append(mark);
    offset = entity.end;
  }
  box.append(part(offset));
  byId(view).querySelector(".note").textContent =
    note || `${entities.length} ${entities.length === 1 ? "entity" : "entities"}`;
}

function drawContext(context) {
  const list = byId("context");
  list.replaceChildren();
  const fields = Object.keys(CONTEXT_NAMES).filter((name) => context && context[name].length);
  if (!fields.length) list.append(element("dd", "None: no photo, or nothing was read from it."));
  for (const name of fields) {
    list.append(element("dt", CONTEXT_NAMES[name]), element("dd", context[name].join(" · ")));
  }
}

function draw(text, result) {
  drawContext(result.context);
  byId("errors").replaceChildren(...result.errors.map((error) => element("li", error)));
  const fellBack = result.view === "text" ? "No context to read: the same as the text view." : "";
  drawEntities("cross", text, result.entities, fellBack);
  // A post the pipeline failed on has no text view: its error is listed above.
  drawEntities("text-only", text, result.text_view ? result.text_view.entities : []);
  byId("output").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  const text = byId("text").value;
  const body = { text, text_view: true };
  if (imageDataUrl) body.image = imageDataUrl;
  const headers = { "Content-Type": "application/json" };
  const key = byId("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  byId("submit").disabled = true;
  document.body.dataset.state = "working";
  say("Reading the post and its photo…");
  try {
    const response = await fetch("annotate", { method: "POST", headers, body: JSON.stringify(body) });
    const answer = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) {
      const hint = response.status === 401 ? " (enter the server's API key above)" : "";
      throw new Error(`${response.status}: ${answer.detail}${hint}`);
    }
    draw(text, answer);
    say("");
    document.body.dataset.state = "done";
  } catch (err) {
    say(err.message, true);
    document.body.dataset.state = "error";
  } finally {
    byId("submit").disabled = false;
  }
}

function setUp() {
  const drop = byId("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    useImage(event.dataTransfer.files[0]);
  });
  byId("image-file").addEventListener("change", (event) => useImage(event.target.files[0]));
  byId("clear-image").addEventListener("click", clearImage);
  byId("post-form").addEventListener("submit", submit);
  loadStatus();
}

setUp();
