"use strict";
// The search page: talks to this server's JSON API only, builds every element with textContent.

const $ = (selector) => document.querySelector(selector);
// Below this best score a text query matched nothing well: unrelated text-image pairs score
// about 0.1-0.2 in OpenAI and LAION CLIPs. A hint, not a filter: the results are still shown.
const WEAK_SCORE = 0.2;
// "More like this" sends the result's image at this size: well above what CLIP looks at (224 px),
// and within any upload limit however large the original file.
const SIMILAR_SIZE = 1024;

let latest = 0; // a response is shown only if no newer request was made meanwhile
let shown = null; // {response, label}: what the grid holds, for the viewer and the download
let viewing = -1; // the result open in the viewer
let queryImageURL = null;
let queryImageName = null; // the file (or result key) an image search was made with
let marksOn = false; // whether the server keeps marks (`dbprompt serve --feedback`)
let marked = new Map(); // image id -> true (relevant) / false (not), for the query shown

function problem(body, response) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg).join("; ");
  return detail || `${response.status} ${response.statusText}`;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(problem(body, response));
  return body;
}

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function setHint(text) {
  $("#hint").textContent = text || "";
  $("#hint").hidden = !text;
}

function databaseURL() {
  return `api/databases/${encodeURIComponent($("#database").value)}`;
}

function relative(url) {
  return url.replace(/^\//, "");
}

async function loadDatabases() {
  const select = $("#database");
  databases = await getJSON("api/databases");
  for (const db of databases) {
    const option = document.createElement("option");
    option.value = db.name;
    option.textContent = `${db.name} (${db.count} images)`;
    select.append(option);
  }
  const wanted = new URLSearchParams(location.search).get("db");
  if (databases.some((db) => db.name === wanted)) select.value = wanted;
  setStatus(databases.length ? "Type a description of an image." : "No databases are served.");
}

// The query image above the results: an uploaded file, or the result "more like this" started from.
function showQueryImage(blob, name) {
  if (queryImageURL) URL.revokeObjectURL(queryImageURL);
  queryImageURL = blob ? URL.createObjectURL(blob) : null;
  queryImageName = blob ? name : null;
  $("#query-image").hidden = !blob;
  $("#query-image-img").src = queryImageURL || "";
  $("#query-image-label").textContent = blob ? `Searching by ${name}` : "";
}

function clearResults() {
  $("#results").replaceChildren();
  shown = null;
  $("#download").disabled = true;
  setHint("");
  if ($("#viewer").open) $("#viewer").close();
}

// An error leaves nothing of an earlier search on screen: it would read as this search's answer.
function showError(text) {
  clearResults();
  showQueryImage(null);
  setStatus(text, true);
}

function button(text, className, onClick) {
  const b = Object.assign(document.createElement("button"), { type: "button", className, textContent: text });
  b.addEventListener("click", (event) => { event.stopPropagation(); onClick(); });
  return b;
}

// Marks: ✓ (what the query asked for) and ✗ (not) on each result of a text search; a second press withdraws.
function feedbackURL() {
  return `${databaseURL()}/feedback`;
}

let databases = [];
function probeMarks() {
  const db = databases.find((d) => d.name === $("#database").value);
  marksOn = Boolean(db && db.feedback);
}

async function loadMarks(query) {
  marked = new Map();
  if (!marksOn || query === null) return;
  const body = await getJSON(`${feedbackURL()}?${new URLSearchParams({ query })}`);
  for (const m of body.marks) if (m.image_id !== null) marked.set(m.image_id, m.relevant);
}

function markButtons(hit) {
  const box = Object.assign(document.createElement("span"), { className: "marks" });
  for (const [relevant, sign, name] of [[true, "✓", "relevant"], [false, "✗", "not relevant"]]) {
    const b = button(sign, `mark ${relevant ? "yes" : "no"}`, () => mark(hit, relevant));
    b.title = `mark as ${name} to this query (${relevant ? "Y" : "N"} in the viewer); again to withdraw`;
    b.setAttribute("aria-label", `${name}`);
    box.append(b);
  }
  return box;
}

function showMarks() {
  for (const box of document.querySelectorAll(".marks")) {
    const state = marked.get(Number(box.dataset.id));
    box.querySelector(".yes").setAttribute("aria-pressed", String(state === true));
    box.querySelector(".no").setAttribute("aria-pressed", String(state === false));
    box.closest(".result, dialog").classList.toggle("is-relevant", state === true);
    box.closest(".result, dialog").classList.toggle("is-irrelevant", state === false);
  }
  const n = marked.size;
  $("#marks-status").textContent = marksOn && shown && shown.response.query !== null
    ? (n ? `${n} marked for this query. ` : "") + "Mark results ✓ or ✗ to teach the search (dbprompt train --feedback)."
    : "";
}

async function mark(hit, relevant) {
  const query = shown && shown.response.query;
  if (query === null) return;
  const withdraw = marked.get(hit.id) === relevant;
  try {
    if (withdraw) {
      await getJSON(`${feedbackURL()}?${new URLSearchParams({ query, image_id: hit.id })}`, { method: "DELETE" });
      marked.delete(hit.id);
    } else {
      await getJSON(feedbackURL(), {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ query, image_id: hit.id, relevant }),
      });
      marked.set(hit.id, relevant);
    }
    showMarks();
  } catch (error) {
    setStatus(`Mark not kept: ${error.message}`, true);
  }
}

function card(hit, index, database) {
  const figure = document.createElement("figure");
  figure.className = "result";
  figure.dataset.database = database;
  figure.dataset.id = hit.id;
  figure.tabIndex = 0;
  const img = document.createElement("img");
  img.src = relative(hit.thumbnail_url);
  img.alt = hit.captions[0] || hit.key;
  img.loading = "lazy";
  const caption = document.createElement("figcaption");
  const score = Object.assign(document.createElement("span"), { className: "score", textContent: `score ${hit.score.toFixed(3)}` });
  const text = Object.assign(document.createElement("span"), { className: "caption", textContent: hit.captions[0] || hit.key });
  const actions = Object.assign(document.createElement("span"), { className: "actions" });
  actions.append(button("More like this", "more-like", () => moreLike(hit)));
  if (hit.captions.length) actions.append(button("Search this caption", "search-caption", () => searchFor(hit.captions[0])));
  caption.append(score, text, actions);
  if (marksOn && shown && shown.response.query !== null) {
    const marks = markButtons(hit);
    marks.dataset.id = hit.id;
    caption.prepend(marks);
  }
  figure.append(img, caption);
  figure.addEventListener("click", () => enlarge(index));
  figure.addEventListener("keydown", (event) => {
    if (event.target === figure && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); enlarge(index); }
  });
  return figure;
}

function render(response, label) {
  const grid = $("#results");
  shown = { response, image: response.query === null ? queryImageName : null };
  grid.replaceChildren(...response.results.map((hit, i) => card(hit, i, response.database)));
  grid.dataset.database = response.database;
  $("#download").disabled = response.results.length === 0;
  const took = response.took_ms.toFixed(1);
  setStatus(`${response.results.length} results for ${label} in ${response.database} (${took} ms)`);
  const best = response.results.length ? response.results[0].score : null;
  const weak = response.query !== null && (best === null || best < WEAK_SCORE);
  setHint(response.note ? response.note : weak
    ? `Weak match: the best score is ${best === null ? "none" : best.toFixed(3)} (below ${WEAK_SCORE}), so these images may not show ${label}. Try other words, such as words the captions use.`
    : "");
  showMarks();
}

function enlarge(index) {
  if (!shown || index < 0 || index >= shown.response.results.length) return;
  viewing = index;
  const hit = shown.response.results[index];
  $("#viewer-image").src = relative(hit.image_url);
  $("#viewer-image").alt = hit.captions[0] || hit.key;
  $("#viewer-position").textContent = `${index + 1} / ${shown.response.results.length}`;
  $("#viewer-key").textContent = hit.key;
  $("#viewer-score").textContent = `score ${hit.score.toFixed(3)}`;
  $("#viewer-captions").replaceChildren(...hit.captions.map((c) => {
    const item = document.createElement("li");
    item.append(button(c, "search-caption", () => searchFor(c)));
    return item;
  }));
  const marks = $("#viewer-marks");
  marks.replaceChildren(...(marksOn && shown.response.query !== null ? [markButtons(hit)] : []));
  if (marks.firstChild) marks.firstChild.dataset.id = hit.id;
  showMarks();
  $("#viewer-prev").disabled = index === 0;
  $("#viewer-next").disabled = index === shown.response.results.length - 1;
  if (!$("#viewer").open) $("#viewer").showModal();
}

async function run(request, label) {
  const ticket = ++latest;
  if ($("#viewer").open) $("#viewer").close();
  setStatus("Searching…");
  try {
    const response = await request();
    await loadMarks(response.query).catch(() => { marked = new Map(); });
    if (ticket === latest) render(response, label);
  } catch (error) {
    if (ticket === latest) showError(error.message);
  }
}

function searchText() {
  const q = $("#query").value.trim();
  if (!q || !$("#database").value) return;
  showQueryImage(null);
  const params = new URLSearchParams({ q, k: $("#k").value });
  history.replaceState(null, "", `?${new URLSearchParams({ db: $("#database").value, q })}`);
  run(() => getJSON(`${databaseURL()}/search?${params}`), `“${q}”`);
}

function searchFor(caption) {
  $("#query").value = caption.slice(0, 500);
  searchText();
}

function searchImage(blob, name, label = name) {
  showQueryImage(blob, name);
  history.replaceState(null, "", `?${new URLSearchParams({ db: $("#database").value })}`);
  const form = new FormData();
  form.append("image", blob, blob.name || "image");
  run(() => getJSON(`${databaseURL()}/search/image?k=${$("#k").value}`, { method: "POST", body: form }), label);
}

async function moreLike(hit) {
  $("#query").value = "";
  try {
    const response = await fetch(`${relative(hit.thumbnail_url)}?size=${SIMILAR_SIZE}`);
    if (!response.ok) throw new Error(problem(await response.json().catch(() => null), response));
    searchImage(await response.blob(), hit.key, `images like ${hit.key}`);
  } catch (error) {
    showError(`Cannot fetch ${hit.key}: ${error.message}`);
  }
}

function download() {
  if (!shown) return;
  const { response, image } = shown;
  const data = { ...response, query_image: image };
  const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
  const slug = (response.query || image || "image").replace(/[^\w.-]+/g, "-").slice(0, 60);
  const link = Object.assign(document.createElement("a"), { href: url, download: `dbprompt-${response.database}-${slug}.json` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 0);
}

function onViewerKey(event) {
  if (event.key === "ArrowRight") enlarge(viewing + 1);
  else if (event.key === "ArrowLeft") enlarge(viewing - 1);
  else if (event.key === "Home") enlarge(0);
  else if (event.key === "End" && shown) enlarge(shown.response.results.length - 1);
  else if ((event.key === "y" || event.key === "n") && marksOn && shown && shown.response.query !== null) {
    mark(shown.response.results[viewing], event.key === "y");
  }
  else return;
  event.preventDefault();
}

let typing;
function init() {
  $("#search").addEventListener("submit", (event) => { event.preventDefault(); searchText(); });
  $("#query").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(searchText, 300); });
  $("#database").addEventListener("change", () => { probeMarks(); searchText(); });
  $("#k").addEventListener("change", searchText);
  $("#image").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) { $("#query").value = ""; searchImage(file, file.name); }
    event.target.value = ""; // choosing the same file again searches again
  });
  $("#query-image-clear").addEventListener("click", () => { showQueryImage(null); clearResults(); setStatus("Type a description of an image."); });
  $("#download").addEventListener("click", download);
  $("#viewer").addEventListener("click", (event) => { if (event.target.id === "viewer") $("#viewer").close(); });
  document.addEventListener("keydown", (event) => { if ($("#viewer").open) onViewerKey(event); });
  $("#viewer").addEventListener("close", () => {
    const cards = document.querySelectorAll("#results .result");
    if (cards[viewing]) cards[viewing].focus(); // back where the viewer was opened (or moved to)
  });
  $("#viewer-prev").addEventListener("click", () => enlarge(viewing - 1));
  $("#viewer-next").addEventListener("click", () => enlarge(viewing + 1));
  $("#viewer-more").addEventListener("click", () => { if (shown) moreLike(shown.response.results[viewing]); });
  loadDatabases()
    .then(probeMarks)
    .then(() => {
      const q = new URLSearchParams(location.search).get("q");
      if (q) { $("#query").value = q; searchText(); }
    })
    .catch((error) => setStatus(`Cannot list databases: ${error.message}`, true));
}

init();
