"use strict";
// The search page (common.js, marks.js, about.js, app.js, drop.js, loaded in this order): it talks to this
// server's JSON API only and builds every element with textContent. This file: the page's state and helpers.

const $ = (selector) => document.querySelector(selector);

let databases = []; // /api/databases: what each database is (the header, examples, folders, weak-match line)
let shown = null; // {response, image, query}: what the grid holds (every page of it), for the viewer and the download
let viewing = -1; // the result open in the viewer
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

function currentDatabase() {
  return databases.find((db) => db.name === $("#database").value) || null;
}

function databaseURL() {
  return `api/databases/${encodeURIComponent($("#database").value)}`;
}

function relative(url) {
  return url.replace(/^\//, "");
}

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

function button(text, className, onClick) {
  const b = Object.assign(element("button", className, text), { type: "button" });
  b.addEventListener("click", (event) => { event.stopPropagation(); onClick(); });
  return b;
}
