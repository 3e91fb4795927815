"use strict";
// The search page: talks to this server's JSON API only, builds every element with textContent.

const $ = (selector) => document.querySelector(selector);
let latest = 0; // a response is shown only if no newer request was made meanwhile

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

function databaseURL() {
  return `api/databases/${encodeURIComponent($("#database").value)}`;
}

async function loadDatabases() {
  const select = $("#database");
  const databases = await getJSON("api/databases");
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

function render(response) {
  const grid = $("#results");
  grid.replaceChildren();
  grid.dataset.database = response.database;
  for (const hit of response.results) {
    const figure = document.createElement("figure");
    figure.className = "result";
    figure.dataset.database = response.database;
    figure.dataset.id = hit.id;
    const img = document.createElement("img");
    img.src = hit.thumbnail_url.replace(/^\//, "");
    img.alt = hit.captions[0] || hit.key;
    img.loading = "lazy";
    const caption = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `score ${hit.score.toFixed(3)}`;
    const text = document.createElement("span");
    text.className = "caption";
    text.textContent = hit.captions[0] || hit.key;
    caption.append(score, text);
    figure.append(img, caption);
    figure.addEventListener("click", () => enlarge(hit));
    grid.append(figure);
  }
  const what = response.query === null ? "the image" : `“${response.query}”`;
  const took = response.took_ms.toFixed(1);
  setStatus(`${response.results.length} results for ${what} in ${response.database} (${took} ms)`);
}

function enlarge(hit) {
  $("#viewer-image").src = hit.image_url.replace(/^\//, "");
  $("#viewer-image").alt = hit.captions[0] || hit.key;
  $("#viewer-key").textContent = hit.key;
  const list = $("#viewer-captions");
  list.replaceChildren(...hit.captions.map((c) => Object.assign(document.createElement("li"), { textContent: c })));
  $("#viewer").showModal();
}

async function run(request) {
  const ticket = ++latest;
  setStatus("Searching…");
  try {
    const response = await request();
    if (ticket === latest) render(response);
  } catch (error) {
    if (ticket === latest) setStatus(error.message, true);
  }
}

function searchText() {
  const q = $("#query").value.trim();
  if (!q || !$("#database").value) return;
  const params = new URLSearchParams({ q, k: $("#k").value });
  history.replaceState(null, "", `?${new URLSearchParams({ db: $("#database").value, q })}`);
  run(() => getJSON(`${databaseURL()}/search?${params}`));
}

function searchImage(file) {
  const form = new FormData();
  form.append("image", file);
  run(() => getJSON(`${databaseURL()}/search/image?k=${$("#k").value}`, { method: "POST", body: form }));
}

let typing;
function init() {
  $("#search").addEventListener("submit", (event) => { event.preventDefault(); searchText(); });
  $("#query").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(searchText, 300); });
  $("#database").addEventListener("change", searchText);
  $("#k").addEventListener("change", searchText);
  $("#image").addEventListener("change", (event) => { if (event.target.files[0]) searchImage(event.target.files[0]); });
  $("#viewer").addEventListener("click", (event) => { if (event.target.id === "viewer") $("#viewer").close(); });
  loadDatabases()
    .then(() => {
      const q = new URLSearchParams(location.search).get("q");
      if (q) { $("#query").value = q; searchText(); }
    })
    .catch((error) => setStatus(`Cannot list databases: ${error.message}`, true));
}

init();
