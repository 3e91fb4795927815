"use strict";
// Searching: text and image queries, the grid of results with "more results" paging, the viewer, the JSON download.

// "More like this" sends the result's image at this size: well above what CLIP looks at (224 px),
// and within any upload limit however large the original file.
const SIMILAR_SIZE = 1024;
const MAX_OFFSET = 900; // the server pages through the best 1,000 (server.MAX_OFFSET + MAX_K)

let latest = 0; // a response is shown only if no newer request was made meanwhile
let queryImageURL = null;
let queryImage = null; // {blob, name}: the file (or result) an image search was made with

// The query image above the results: an uploaded file, or the result "more like this" started from.
function showQueryImage(blob, name) {
  if (queryImageURL) URL.revokeObjectURL(queryImageURL);
  queryImageURL = blob ? URL.createObjectURL(blob) : null;
  queryImage = blob ? { blob, name } : null;
  $("#query-image").hidden = !blob;
  $("#query-image-img").src = queryImageURL || "";
  $("#query-image-label").textContent = blob ? `Searching by ${name}` : "";
}

function clearResults() {
  $("#results").replaceChildren();
  shown = null;
  $("#download").disabled = true;
  $("#more").hidden = true;
  setHint("");
  showWelcome(true);
  if ($("#viewer").open) $("#viewer").close();
}

// An error leaves nothing of an earlier search on screen: it would read as this search's answer.
function showError(text) {
  clearResults();
  showQueryImage(null);
  setStatus(text, true);
}

function card(hit, index, database) {
  const figure = element("figure", "result");
  figure.dataset.database = database;
  figure.dataset.id = hit.id;
  figure.dataset.key = hit.key;
  figure.tabIndex = 0;
  const img = element("img");
  img.src = relative(hit.thumbnail_url);
  img.alt = hit.captions[0] || hit.key;
  img.loading = "lazy";
  const caption = element("figcaption");
  const text = element("span", "caption", hit.captions[0] || hit.key);
  text.title = text.textContent;
  const meta = element("span", "meta");
  meta.append(element("span", "score", `score ${hit.score.toFixed(3)}`));
  if (marking()) meta.append(markButtons(hit));
  const actions = element("span", "actions");
  const similar = button("Similar", "more-like", () => moreLike(hit));
  similar.title = "search for images like this one";
  actions.append(similar);
  if (hit.captions.length) {
    const again = button("Search caption", "search-caption", () => searchFor(hit.captions[0]));
    again.title = "search for this image's caption";
    actions.append(again);
  }
  caption.append(text, meta, actions);
  figure.append(img, caption);
  figure.addEventListener("click", () => enlarge(index));
  figure.addEventListener("keydown", (event) => {
    if (event.target === figure && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); enlarge(index); }
  });
  return figure;
}

function weakHint(response, label) {
  if (response.note) return response.note;
  if (!response.weak) return "";
  const db = databases.find((d) => d.name === response.database);
  const best = response.results.length ? response.results[0].score.toFixed(3) : "none";
  const line = response.weak_below.toFixed(3);
  const measured = db && db.weak_calibrated
    ? "the line measured for this database when it was indexed"
    : "a line for OpenAI and LAION CLIPs: index the database again to measure its own";
  return `Weak match: the best score is ${best}, under ${line} (${measured}), so these images may not show ${label}. Try other words, such as words the captions use.`;
}

function render(response, label, fetchPage, append = false) {
  const grid = $("#results");
  const before = append ? shown.response.results : [];
  const results = [...before, ...response.results];
  if (!append) shown = { response, image: response.query === null && queryImage ? queryImage.name : null, label, fetchPage };
  shown.response = { ...response, offset: 0, k: results.length, results };
  const cards = response.results.map((hit, i) => card(hit, before.length + i, response.database));
  if (append) grid.append(...cards); else grid.replaceChildren(...cards);
  grid.dataset.database = response.database;
  showWelcome(false);
  $("#download").disabled = results.length === 0;
  $("#more").hidden = response.results.length < response.k || results.length > MAX_OFFSET;
  const took = response.took_ms.toFixed(1);
  const folder = response.folder === null ? "" : ` / ${response.folder || "(top folder)"}`;
  const tag = response.tag === null ? "" : ` tagged ${response.tag}`;
  setStatus(`${results.length} results for ${label} in ${response.database}${folder}${tag} (${took} ms)`);
  if (!append) setHint(weakHint(response, label));
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
  $("#viewer-open").href = relative(hit.image_url);
  $("#viewer-download").href = `${relative(hit.image_url)}?download=1`;
  $("#viewer-captions").replaceChildren(...hit.captions.map((c) => {
    const item = element("li");
    item.append(button(c, "search-caption", () => searchFor(c)));
    return item;
  }));
  $("#viewer-marks").replaceChildren(...(marking() ? [markButtons(hit)] : []));
  showMarks();
  $("#viewer-prev").disabled = index === 0;
  $("#viewer-next").disabled = index === shown.response.results.length - 1;
  if (!$("#viewer").open) $("#viewer").showModal();
}

// fetchPage(offset) asks the server for one page; "More results" asks it again for the next one.
async function run(fetchPage, label) {
  const ticket = ++latest;
  if ($("#viewer").open) $("#viewer").close();
  setStatus("Searching…");
  try {
    const response = await fetchPage(0);
    await loadMarks(response.query).catch(() => { marked = new Map(); });
    if (ticket === latest) render(response, label, fetchPage);
  } catch (error) {
    if (ticket === latest) showError(error.message);
  }
}

async function more() {
  if (!shown) return;
  const ticket = latest;
  $("#more").disabled = true;
  try {
    const response = await shown.fetchPage(shown.response.results.length);
    if (ticket === latest) render(response, shown.label, shown.fetchPage, true);
  } catch (error) {
    if (ticket === latest) setStatus(`No more results: ${error.message}`, true);
  } finally {
    $("#more").disabled = false;
  }
}

function pageParams(offset) {
  const params = new URLSearchParams({ k: $("#k").value });
  if (offset) params.set("offset", offset);
  const folder = chosenFolder();
  if (folder !== null) params.set("folder", folder);
  const tag = chosenTag();
  if (tag !== null) params.set("tag", tag);
  return params;
}

function searchText() {
  const q = $("#query").value.trim();
  if (!q || !$("#database").value) return;
  showQueryImage(null);
  history.replaceState(null, "", `?${new URLSearchParams({ db: $("#database").value, q })}`);
  const url = databaseURL();
  run((offset) => getJSON(`${url}/search?${new URLSearchParams({ q, ...Object.fromEntries(pageParams(offset)) })}`), `“${q}”`);
}

function searchFor(caption) {
  $("#query").value = caption.slice(0, 500);
  searchText();
}

function searchImage(blob, name, label = name) {
  showQueryImage(blob, name);
  history.replaceState(null, "", `?${new URLSearchParams({ db: $("#database").value })}`);
  const url = databaseURL();
  run((offset) => {
    const form = new FormData();
    form.append("image", blob, blob.name || "image");
    return getJSON(`${url}/search/image?${pageParams(offset)}`, { method: "POST", body: form });
  }, label);
}

// Whatever was searched last, again: another database, folder, tag or page size.
function searchAgain() {
  if (queryImage) searchImage(queryImage.blob, queryImage.name);
  else searchText();
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
  const link = Object.assign(element("a"), { href: url, download: `dbprompt-${response.database}-${slug}.json` });
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
  else if ((event.key === "y" || event.key === "n") && marking()) mark(shown.response.results[viewing], event.key === "y");
  else return;
  event.preventDefault();
}

let typing;
function init() {
  // Enter searches now, and the search typing would start in a moment is dropped (it would close a viewer opened meanwhile).
  $("#search").addEventListener("submit", (event) => { event.preventDefault(); clearTimeout(typing); searchText(); });
  $("#query").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(searchText, 300); });
  $("#database").addEventListener("change", () => { probeMarks(); showDatabase(); searchAgain(); });
  $("#folder").addEventListener("change", searchAgain);
  $("#tag").addEventListener("change", searchAgain);
  $("#k").addEventListener("change", searchAgain);
  $("#image").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) { $("#query").value = ""; searchImage(file, file.name); }
    event.target.value = ""; // choosing the same file again searches again
  });
  $("#query-image-clear").addEventListener("click", () => { showQueryImage(null); clearResults(); setStatus(""); });
  $("#download").addEventListener("click", download);
  $("#more").addEventListener("click", more);
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
