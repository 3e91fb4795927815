"use strict";
// An image pasted (Ctrl+V) or dropped anywhere on the page searches by that image.

function imageFrom(items) {
  for (const item of items || []) {
    const file = item.kind === "file" ? item.getAsFile() : item instanceof File ? item : null;
    if (file && file.type.startsWith("image/")) return file;
  }
  return null;
}

function searchByFile(file, how) {
  $("#query").value = "";
  searchImage(file, file.name && file.name !== "image.png" ? file.name : `the ${how} image`);
}

document.addEventListener("paste", (event) => {
  const file = imageFrom(event.clipboardData && event.clipboardData.items);
  if (!file) return; // text pastes into the search box as usual
  event.preventDefault();
  searchByFile(file, "pasted");
});

let dragDepth = 0; // dragenter and dragleave fire for every element crossed
function dragging(on) {
  $("#drop-zone").hidden = !on;
}

function carriesFiles(event) {
  return event.dataTransfer && [...event.dataTransfer.types].includes("Files");
}

document.addEventListener("dragenter", (event) => {
  if (!carriesFiles(event)) return;
  dragDepth += 1;
  dragging(true);
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) dragging(false);
});
document.addEventListener("dragover", (event) => { if (carriesFiles(event)) event.preventDefault(); });
document.addEventListener("drop", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  dragDepth = 0;
  dragging(false);
  const file = imageFrom(event.dataTransfer.files);
  if (file) searchByFile(file, "dropped");
  else setStatus("Drop an image file (PNG, JPEG, ...) to search by it.", true);
});
