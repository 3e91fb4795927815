"use strict";
// What the chosen database is (the header line), what to try first (the empty page) and its folder and tag filters.

async function loadDatabases() {
  const select = $("#database");
  databases = await getJSON("api/databases");
  for (const db of databases) {
    const option = document.createElement("option");
    option.value = db.name;
    option.textContent = `${db.name} (${db.count.toLocaleString("en")} images)`;
    select.append(option);
  }
  const wanted = new URLSearchParams(location.search).get("db");
  if (databases.some((db) => db.name === wanted)) select.value = wanted;
  setStatus(databases.length ? "" : "No databases are served.");
  showDatabase();
}

function day(iso) {
  const when = iso ? new Date(iso) : null;
  if (!when || Number.isNaN(when.getTime())) return null;
  return when.toLocaleDateString("en", { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" });
}

// One line of facts, each said only where the index or its prompt file records it.
function aboutParts(db) {
  const parts = [`${db.count.toLocaleString("en")} images`, db.pretrained ? `${db.backbone} (${db.pretrained})` : db.backbone];
  if (db.prompts === "zero-shot") parts.push("zero-shot (no trained prompts)");
  else if (db.prompts) {
    const trained = day(db.prompt_modified);
    const on = db.train_images ? ` on ${db.train_images.toLocaleString("en")} images` : "";
    parts.push(`${db.prompts} prompts${db.prompt_file ? ` from ${db.prompt_file}` : ""}${trained ? `, trained ${trained}${on}` : ""}`);
  }
  if (db.val_r1) parts.push(`val R@1 ${db.val_r1.zero_shot.toFixed(1)} zero-shot → ${db.val_r1.trained.toFixed(1)} with prompts`);
  const indexed = day(db.created);
  if (indexed) parts.push(`indexed ${indexed}`);
  return parts;
}

function showDatabase() {
  const db = currentDatabase();
  const about = $("#about");
  about.replaceChildren();
  if (!db) return;
  if (db.problem) {
    about.append(element("span", "problem", db.problem));
  } else {
    about.append(element("strong", "", db.name));
    for (const part of aboutParts(db)) about.append(element("span", "", part));
  }
  $("#welcome-title").textContent = `Search ${db.count.toLocaleString("en")} images in ${db.name}`;
  const examples = db.examples.map((text) => button(text, "example", () => searchFor(text)));
  $("#examples").replaceChildren(...(examples.length ? [element("span", "try", "Try"), ...examples] : []));
  showFolders(db);
  showTags(db);
}

// Folder values are prefixed: the top folder is "" to the API, as is "every folder" to the select.
function showFolders(db) {
  const folders = Object.entries(db.folders || {});
  const select = $("#folder");
  const all = Object.assign(element("option", "", "All folders"), { value: "" });
  select.replaceChildren(all, ...folders.map(([folder, count]) => Object.assign(
    element("option", "", `${folder || "(top folder)"} · ${count.toLocaleString("en")}`), { value: `f:${folder}` },
  )));
  $("#folder-pick").hidden = folders.length < 2;
}

function chosenFolder() {
  const value = $("#folder").value;
  return value.startsWith("f:") ? value.slice(2) : null;
}

// The database's most frequent tags, most frequent first; "" is every image, tagged or not.
function showTags(db) {
  const tags = Object.entries(db.tags || {});
  const all = Object.assign(element("option", "", "All tags"), { value: "" });
  $("#tag").replaceChildren(all, ...tags.map(([tag, count]) => Object.assign(
    element("option", "", `${tag} · ${count.toLocaleString("en")}`), { value: `t:${tag}` },
  )));
  $("#tag-pick").hidden = tags.length === 0;
}

function chosenTag() {
  const value = $("#tag").value;
  return value.startsWith("t:") ? value.slice(2) : null;
}

function showWelcome(on) {
  $("#welcome").hidden = !on;
  document.body.classList.toggle("has-results", !on);
}
